"""Live progress of the task a job is running: call counts, reported to api.

The counts come from the completion records (``taskproc.completions``) that every executor
writes beside a call's files before the call counts, so they are the same for the local and
the SLURM executor, and right after a runner restart: a resumed task's calls completed before
the restart already have their records. While a part of the task runs (its non-parallel call,
or its parallel calls), the subfolder is listed at most once per ``interval`` and a changed
count is reported with ``ReportTaskProgress``.

Reports are best effort: one attempt each; a failed one is logged and the next change is
reported again. The final counts travel with ``ApplyTaskResult`` (DONE) or ``FinishJob``
(FAILED), which are retried, so a lost report never leaves a wrong final count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc.aio

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal_runner.taskproc.calls import JobStopped, TaskCall

__all__ = ["DEFAULT_INTERVAL", "TaskProgress", "count_done"]

log = logging.getLogger("fractal.runner.progress")

#: How often the records are counted while calls run (seconds).
DEFAULT_INTERVAL = 1.0

Report = Callable[[pb.CallCounts], Awaitable[object]]


def count_done(calls: Sequence[TaskCall]) -> int:
    """How many of ``calls`` have a completion record (one listing per folder)."""
    by_folder: dict[Path, list[str]] = {}
    for call in calls:
        by_folder.setdefault(call.paths.done.parent, []).append(call.paths.done.name)
    done = 0
    for folder, names in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            continue
        done += sum(1 for name in names if name in present)
    return done


class TaskProgress:
    """The counts of one task of a job, and their reporting while its calls run."""

    def __init__(self, report: Report, *, interval: float = DEFAULT_INTERVAL) -> None:
        self._report = report
        self.interval = interval
        self.done = 0  # calls of the parts that have ended
        self.failed = 0
        self.total = 0
        self._running: Sequence[TaskCall] = ()
        self._sent: tuple[int, int, int] | None = None

    def counts(self) -> pb.CallCounts:
        """The counts as known now (without listing the folder)."""
        return pb.CallCounts(done=self.done, failed=self.failed, total=self.total)

    async def send(self) -> None:
        """Report the current counts, once, if they changed since the last report."""
        running_done = await asyncio.to_thread(count_done, self._running) if self._running else 0
        counts = pb.CallCounts(done=self.done + running_done, failed=self.failed, total=self.total)
        key = (counts.done, counts.failed, counts.total)
        if key == self._sent:
            return
        try:
            await self._report(counts)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            log.info("progress report not delivered (%s); the next one will be", exc)
            return
        self._sent = key

    @contextlib.asynccontextmanager
    async def part(self, calls: Sequence[TaskCall], *, more_total: int) -> AsyncIterator[None]:
        """Around one ``run_calls`` of the task: ``more_total`` calls join the total, the
        records of ``calls`` are counted while it runs. A part that ends normally counts all
        its calls done; one that raises counts the records found, plus one failed call unless
        the job was stopped (the executors stop at the first call that fails)."""
        self.total += more_total
        self._running = calls
        loop = asyncio.create_task(self._loop())
        try:
            yield
        except JobStopped:
            self.done += await asyncio.to_thread(count_done, calls)
            raise
        except Exception:
            self.done += await asyncio.to_thread(count_done, calls)
            self.failed += 1
            raise
        else:
            self.done += len(calls)
        finally:
            self._running = ()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def _loop(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.interval)
