"""A service's metrics registry and endpoint (fractal_grpc.grpckit.metrics, observability)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, Counter

from fractal_grpc.grpckit.metrics import MetricsServer, ServiceMetrics
from fractal_grpc.observability import Observability
from fractal_grpc.settings import SettingsError


@pytest.fixture
def module_counter() -> Iterator[Counter]:
    """A counter defined the way module code defines one: on the default registry."""
    counter = Counter("fractal_test_module_calls", "A module-level counter.", ("kind",))
    try:
        yield counter
    finally:
        REGISTRY.unregister(counter)


def test_the_endpoint_serves_the_service_registry_and_module_level_metrics(
    module_counter: Counter,
) -> None:
    runner, api = ServiceMetrics("runner"), ServiceMetrics("api")
    module_counter.labels("squeue").inc(3)
    runner.outbox_published.inc(2)
    server = MetricsServer("127.0.0.1:0", runner)
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    assert 'fractal_test_module_calls_total{kind="squeue"} 3.0' in text
    assert "fractal_outbox_published_total 2.0" in text
    assert "process_cpu_seconds_total" in text or "python_gc_objects_collected_total" in text
    # Another service's registry has its own numbers.
    assert "fractal_outbox_published_total 0.0" in api.text()


def test_a_metrics_port_in_use_stops_the_service_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        obs = Observability(
            "api", metrics_address=f"127.0.0.1:{port}", variable="FRACTAL_API_METRICS_ADDRESS"
        )
        with pytest.raises(SettingsError, match="FRACTAL_API_METRICS_ADDRESS: cannot listen"):
            obs.start()


def test_an_empty_address_opens_no_endpoint() -> None:
    obs = Observability("api", metrics_address="")
    obs.start()
    assert obs.metrics_port == 0
    obs.stop()
