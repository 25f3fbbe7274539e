"""Run bookkeeping (the ``runs`` table) and the scheduler that executes jobs in the background.

- A submit command records a run (idempotent on redelivery) and launches its execution; the
  command is acked as soon as the row is written. At most ``max_jobs`` jobs execute at once;
  the others wait in the process for a slot.
- At start-up every run that is not finished is launched again (resumed).
- A stop command cancels the job's executor when the job executes here (its processes are
  killed and the job ends FAILED through the normal error path); otherwise (queued here, or
  unknown) the job is ended FAILED directly. FinishJob is idempotent, so a late or repeated stop
  does no harm.
- Closing the scheduler (graceful shutdown) cancels every execution: their task processes are
  killed, their runs stay unfinished, and the next start resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import transaction
from fractal_runner.api_client import JobExecutionClient
from fractal_runner.execution import FAILED, JobExecution, stop_log, unknown_error_log
from fractal_runner.models import Run, RunStatus
from fractal_runner.taskproc import LocalExecutor

log = logging.getLogger("fractal.runner")

#: Attempts of one execution within this process before its run is given up (each failed
#: attempt is an error talking to api that is not UNAVAILABLE, which is retried on its own).
MAX_ATTEMPTS = 5
RETRY_DELAY_SECONDS = 1.0
#: Pause before trying again when the runner's own database writes fail.
BOOKKEEPING_RETRY_SECONDS = 5.0
#: How long the last attempt to end a given-up job FAILED may wait for api.
GIVE_UP_FINISH_SECONDS = 30.0


class RunStore:
    """The ``runner.runs`` rows."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def add(self, job_id: int) -> bool:
        """Record a queued run; False when it was already recorded."""
        async with transaction(self.sessions) as session:
            result = await session.execute(
                insert(Run)
                .values(job_id=job_id)
                .on_conflict_do_nothing(index_elements=[Run.job_id])
                .returning(Run.job_id)
            )
            return result.scalar_one_or_none() is not None

    async def start_attempt(self, job_id: int) -> int:
        """Mark the run running (recording it if needed); returns its number of attempts."""
        async with transaction(self.sessions) as session:
            stmt = (
                insert(Run)
                .values(job_id=job_id, status=RunStatus.RUNNING, attempts=1)
                .on_conflict_do_update(
                    index_elements=[Run.job_id],
                    set_={
                        "status": RunStatus.RUNNING,
                        "attempts": Run.attempts + 1,
                        "updated_at": func.now(),
                    },
                )
                .returning(Run.attempts)
            )
            attempts: int = (await session.execute(stmt)).scalar_one()
            return attempts

    async def record_error(self, job_id: int, error: str) -> None:
        await self._update(job_id, last_error=error)

    async def finish(self, job_id: int, error: str | None = None) -> None:
        """Mark the run finished (no-op for an unknown run)."""
        values: dict[str, object] = {"status": RunStatus.FINISHED}
        if error is not None:
            values["last_error"] = error
        await self._update(job_id, **values)

    async def _update(self, job_id: int, **values: object) -> None:
        async with transaction(self.sessions) as session:
            await session.execute(
                update(Run).where(Run.job_id == job_id).values(**values, updated_at=func.now())
            )

    async def unfinished(self) -> list[int]:
        async with self.sessions() as session:
            result = await session.execute(
                select(Run.job_id)
                .where(Run.status != RunStatus.FINISHED)
                .order_by(Run.created_at, Run.job_id)
            )
            return list(result.scalars())

    async def get(self, job_id: int) -> Run | None:
        async with self.sessions() as session:
            return await session.get(Run, job_id)


@dataclass(eq=False)
class _ActiveJob:
    """A job launched in this process: waiting for a slot, or executing (``started``)."""

    job_id: int
    executor: LocalExecutor
    task: asyncio.Task[None] | None = None
    started: bool = False


class JobScheduler:
    """Launches, stops and resumes job executions in this process."""

    def __init__(
        self,
        store: RunStore,
        api: JobExecutionClient,
        *,
        max_jobs: int,
        backend: str = "local",
        local_config_file: Path | None = None,
        executor_factory: Callable[[], LocalExecutor] = LocalExecutor,
        retry_delay: float = RETRY_DELAY_SECONDS,
    ) -> None:
        self.store = store
        self.api = api
        self.backend = backend
        self.local_config_file = local_config_file
        self.executor_factory = executor_factory
        self.retry_delay = retry_delay
        self._slots = asyncio.Semaphore(max_jobs)
        self._active: dict[int, _ActiveJob] = {}
        self._closing = False

    def is_active(self, job_id: int) -> bool:
        return job_id in self._active

    async def submit(self, job_id: int) -> None:
        """Handle a submit command: record the run, then execute it in the background."""
        added = await self.store.add(job_id)
        if not added:
            run = await self.store.get(job_id)
            if run is not None and run.status == RunStatus.FINISHED:
                log.info("job %s: submit redelivered after its run finished; ignored", job_id)
                return
        self._launch(job_id)

    async def resume(self) -> list[int]:
        """Launch every unfinished run; returns their job ids."""
        job_ids = await self.store.unfinished()
        for job_id in job_ids:
            log.info("job %s: resuming its unfinished run", job_id)
            self._launch(job_id)
        return job_ids

    async def stop(self, job_id: int) -> None:
        """Handle a stop command (see the module docstring)."""
        job = self._active.get(job_id)
        if job is not None and job.started:
            log.info("job %s: stop requested; killing its task processes", job_id)
            await job.executor.cancel()
            return
        if job is not None and job.task is not None:
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
            # A task cancelled before its first step never ran its own clean-up.
            if self._active.get(job_id) is job:
                del self._active[job_id]
        log.info("job %s: stop requested while not executing here; ending it", job_id)
        await self.api.finish_job(job_id, FAILED, stop_log(job_id))
        await self.store.finish(job_id)

    async def close(self) -> None:
        """Cancel every execution (killing its processes); runs stay unfinished."""
        self._closing = True
        tasks = [job.task for job in self._active.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._active.clear()

    def _launch(self, job_id: int) -> None:
        if self._closing or job_id in self._active:
            return
        job = _ActiveJob(job_id=job_id, executor=self.executor_factory())
        self._active[job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")

    async def _run(self, job: _ActiveJob) -> None:
        try:
            async with self._slots:
                job.started = True
                while True:
                    try:
                        await self._execute(job)
                        return
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - the database failed: try again later
                        log.exception("job %s: run bookkeeping failed; retrying", job.job_id)
                        await asyncio.sleep(BOOKKEEPING_RETRY_SECONDS)
        finally:
            if self._active.get(job.job_id) is job:
                del self._active[job.job_id]

    async def _execute(self, job: _ActiveJob) -> None:
        job_id = job.job_id
        for attempt in range(1, MAX_ATTEMPTS + 1):
            attempts = await self.store.start_attempt(job_id)
            log.info("job %s: executing (attempt %s)", job_id, attempts)
            execution = JobExecution(
                job_id,
                self.api,
                job.executor,
                backend=self.backend,
                local_config_file=self.local_config_file,
            )
            try:
                await execution.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then given up
                error = f"{type(exc).__name__}: {exc}"
                log.exception("job %s: execution attempt failed", job_id)
                if attempt == MAX_ATTEMPTS:
                    log.error("job %s: given up after %s attempts", job_id, attempt)
                    await self._give_up(job_id, traceback.format_exc())
                    await self.store.finish(job_id, error=error)
                    return
                await self.store.record_error(job_id, error)
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            await self.store.finish(job_id)
            return

    async def _give_up(self, job_id: int, trace: str) -> None:
        """Best effort: end the job FAILED, so it does not stay SUBMITTED."""
        try:
            await asyncio.wait_for(
                self.api.finish_job(job_id, FAILED, unknown_error_log(job_id, trace)),
                GIVE_UP_FINISH_SECONDS,
            )
        except Exception:  # noqa: BLE001 - nothing more can be done from here
            log.exception("job %s: could not end it FAILED", job_id)
