"""The one executor interface the job execution drives (local subprocesses or SLURM jobs).

``bind_job`` gives the executor its job's spec before any call (the local executor ignores it;
the SLURM one takes the user, folders and account from it). ``run_calls`` gets the task part's
``meta`` and the task's name (SLURM merges them into its job settings; the local executor
uses only ``concurrency``). Both executors record a completion per call
(``taskproc.completions``) before it counts and skip the calls already recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal_runner.taskproc.calls import TaskCall
from fractal_runner.taskproc.ledger import ProcessLedger

__all__ = ["Executor"]


class Executor(Protocol):
    ledger: ProcessLedger | None

    @property
    def stopped(self) -> bool: ...

    def bind_job(self, spec: pb.JobSpec) -> None: ...

    async def run_calls(
        self,
        calls: Sequence[TaskCall],
        *,
        concurrency: int | None,
        meta: Mapping[str, Any] | None = None,
        task_name: str = "task",
    ) -> list[dict[str, Any] | None]: ...

    async def cancel(self) -> None: ...
