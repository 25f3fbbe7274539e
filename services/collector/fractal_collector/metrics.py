"""The collector's own metrics, in its service registry (``fractal_grpc.grpckit.metrics``):

- ``fractal_collector_collections_finished_total{state}``: collections (and deactivations,
  reactivations) this collector ended, by the state api recorded (``ok``, ``failed``), counted
  when api accepted the end;
- ``fractal_collector_installer_seconds{installer}``: the wall time of each installer command
  (uv or pip: environment, resolve, install, freeze), failed ones included.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from fractal.v2 import task_collection_pb2

#: Installer commands take from tens of milliseconds (uv, warm cache) to minutes (pip, cold).
INSTALLER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.collections_finished = Counter(
            "fractal_collector_collections_finished",
            "Collections ended by this collector, by final state.",
            ("state",),
            registry=registry,
        )
        self.installer_seconds = Histogram(
            "fractal_collector_installer_seconds",
            "Wall time of each installer command run by this collector.",
            ("installer",),
            buckets=INSTALLER_BUCKETS,
            registry=registry,
        )

    def collection_finished(self, state: task_collection_pb2.CollectionState.ValueType) -> None:
        name = task_collection_pb2.CollectionState.Name(state)
        self.collections_finished.labels(name.removeprefix("COLLECTION_STATE_").lower()).inc()

    def installer_ran(self, installer: str, seconds: float) -> None:
        """One installer command's wall time, labelled by the installer that ran it (over SSH
        pip, when uv is configured but not on the host)."""
        self.installer_seconds.labels(installer).observe(seconds)
