"""The runner's own metrics, in its service registry (``fractal_grpc.grpckit.metrics``):

- ``fractal_runner_jobs_finished_total{state}``: jobs this runner ended (``done``, ``failed``),
  counted when api accepted the final state;
- ``fractal_runner_task_calls_total{outcome}``: task calls run through the executor, local or
  SLURM: ``done`` for each call of a part that completed; when a part fails fast, ``failed``
  for the call that failed it (``stopped`` when the job was stopped), and the calls it cut short
  are not counted.

The SLURM code's scheduler-call counter lives in prometheus_client's default registry, which
the runner's endpoint serves too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal.v2 import job_pb2
from fractal_runner.taskproc.calls import JobStopped, TaskCall
from fractal_runner.taskproc.executor import Executor
from fractal_runner.taskproc.ledger import ProcessLedger


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs_finished = Counter(
            "fractal_runner_jobs_finished",
            "Jobs ended by this runner, by final state.",
            ("state",),
            registry=registry,
        )
        self.task_calls = Counter(
            "fractal_runner_task_calls",
            "Task calls run by this runner's executors, by outcome.",
            ("outcome",),
            registry=registry,
        )

    def job_finished(self, status: job_pb2.JobStatus.ValueType) -> None:
        state = job_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()
        self.jobs_finished.labels(state).inc()

    def counted(self, factory: Callable[[], Executor]) -> Callable[[], Executor]:
        """``factory``'s executors, with their task calls counted."""

        def build() -> Executor:
            return CountingExecutor(factory(), self)

        return build


class CountingExecutor:
    """An executor that counts the outcome of the task calls it passes on."""

    def __init__(self, inner: Executor, metrics: RunnerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    @property
    def ledger(self) -> ProcessLedger | None:
        return self.inner.ledger

    @ledger.setter
    def ledger(self, value: ProcessLedger | None) -> None:
        self.inner.ledger = value

    @property
    def stopped(self) -> bool:
        return self.inner.stopped

    def bind_job(self, spec: pb.JobSpec) -> None:
        self.inner.bind_job(spec)

    async def run_calls(
        self,
        calls: Sequence[TaskCall],
        *,
        concurrency: int | None,
        meta: Mapping[str, Any] | None = None,
        task_name: str = "task",
    ) -> list[dict[str, Any] | None]:
        try:
            results = await self.inner.run_calls(
                calls, concurrency=concurrency, meta=meta, task_name=task_name
            )
        except JobStopped:
            self.metrics.task_calls.labels("stopped").inc()
            raise
        except Exception:
            self.metrics.task_calls.labels("failed").inc()
            raise
        self.metrics.task_calls.labels("done").inc(len(results))
        return results

    async def cancel(self) -> None:
        await self.inner.cancel()

    def __getattr__(self, name: str) -> Any:
        # Anything else an executor offers (the SLURM one's own attributes).
        return getattr(self.inner, name)
