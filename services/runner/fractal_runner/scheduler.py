"""The scheduler that executes jobs in the background, under leases on their runs
(``fractal_runner.run_store``, ``fractal_runner.leases``).

- A submit command records the run and claims it (idempotent on redelivery; a run finished or
  held by another live replica is left alone), then launches its execution; the command is
  acked as soon as the row is written. At most ``max_jobs`` jobs execute at once; the others
  wait in the process for a slot, under their lease.
- While a job is in the process its lease is renewed; a job whose run another replica now
  holds, or whose lease could not be renewed in time, is interrupted here (not ended).
- At start-up, every lease interval, and as soon as the earliest lease of another replica would
  expire, the scheduler claims the orphaned unfinished runs (no owner, an expired lease, or an
  owner process of this host that is gone) and resumes them. A live replica's run is never
  taken.
- Stop: every replica receives the stop broadcast and stops the job if it is in the process
  (``stop_local``: an executing job has its processes killed and ends FAILED through the normal
  error path; a job waiting for a slot is ended FAILED at once). The durable stop command,
  received by one replica (``stop``), additionally ends the job FAILED directly when no live
  replica holds its run (queued nowhere, unknown, orphaned); otherwise it is left to the holder,
  which also checks ``stop_requested`` between tasks. FinishJob is idempotent, so a late or
  repeated stop does no harm.
- An attempt that fails without the job being at fault (api or a dependency unavailable, the
  runner's own database) is run again after a jittered backoff, as long as the run's lease is
  held; only unexpected errors give the job up after a few attempts (``fractal_runner.attempts``).
- Closing the scheduler (graceful shutdown) cancels every execution: their task processes are
  killed, their runs stay unfinished, and their leases are released so that another replica (or
  the next start) resumes them at once (the app tells the other replicas, which sweep at once:
  ``sweep_soon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fractal_grpc import logs
from fractal_grpc.retry import RetryPolicy
from fractal_runner.api_client import JobExecutionClient
from fractal_runner.attempts import (
    ATTEMPT_BACKOFF,
    BOOKKEEPING_BACKOFF,
    MAX_UNEXPECTED_ATTEMPTS,
    Verdict,
    verdict,
)
from fractal_runner.execution import FAILED, JobExecution, stop_log, unknown_error_log
from fractal_runner.models import RunStatus
from fractal_runner.run_store import RunStore
from fractal_runner.taskproc import LocalExecutor
from fractal_runner.taskproc.executor import Executor
from fractal_runner.taskproc.ledger import ProcessLedger, kill_leftovers

__all__ = ["JobScheduler"]

log = logging.getLogger("fractal.runner")

#: The orphan sweep runs this long after the earliest lease of another replica would expire.
SWEEP_SLACK_SECONDS = 0.2


@dataclass(eq=False)
class _ActiveJob:
    """A job launched in this process: waiting for a slot, or executing (``started``)."""

    job_id: int
    executor: Executor
    #: When (loop.time()) the last claim or renewal of its lease started: the lease lasts at
    #: least ``lease_seconds`` from then.
    leased_at: float
    task: asyncio.Task[None] | None = None
    started: bool = False


class JobScheduler:
    """Launches, stops and resumes job executions in this process, under leases on their runs."""

    def __init__(
        self,
        store: RunStore,
        api: JobExecutionClient,
        *,
        max_jobs: int,
        backend: str = "local",
        local_config_file: Path | None = None,
        executor_factory: Callable[[], Executor] = LocalExecutor,
        attempt_backoff: RetryPolicy = ATTEMPT_BACKOFF,
        ledger_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.api = api
        self.backend = backend
        self.local_config_file = local_config_file
        self.executor_factory = executor_factory
        self.attempt_backoff = attempt_backoff
        #: Per-job files of started task processes (see taskproc.ledger); None: not kept.
        self.ledger_dir = ledger_dir
        self._slots = asyncio.Semaphore(max_jobs)
        self._active: dict[int, _ActiveJob] = {}
        self._closing = False
        self._loops: list[asyncio.Task[None]] = []
        self._next_sweep = store.lease.lease_seconds
        self._sweep_now = asyncio.Event()

    @property
    def owner(self) -> str:
        return self.store.owner

    def is_active(self, job_id: int) -> bool:
        return job_id in self._active

    async def start(self) -> list[int]:
        """Resume the orphaned runs, then keep the leases (renewal, orphan sweep) in the
        background; returns the resumed job ids."""
        resumed = await self.resume()
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._renew_loop(), name="runner-lease-renewal"),
                asyncio.create_task(self._sweep_loop(), name="runner-orphan-sweep"),
            ]
        return resumed

    async def submit(self, job_id: int) -> None:
        """Handle a submit command: record and claim the run, then execute it in the
        background. A run that is finished or held by another live runner is left alone."""
        leased_at = self._now()
        if not await self.store.claim(job_id, create=True):
            log.info("job %s: run finished or held by another runner; submit ignored", job_id)
            return
        self._launch(job_id, leased_at)

    async def resume(self) -> list[int]:
        """Claim and launch the orphaned unfinished runs (no owner, an expired lease, or an
        owner process of this host that is gone); returns their job ids."""
        leased_at = self._now()
        job_ids, next_expiry = await self.store.claim_orphans()
        self._next_sweep = self._sweep_delay(next_expiry)
        for job_id in job_ids:
            log.info("job %s: resuming its unfinished run", job_id)
            self._launch(job_id, leased_at)
        return job_ids

    async def stop_local(self, job_id: int) -> bool:
        """Stop the job if it is in this process (the broadcast stop every replica receives);
        returns whether it was. An executing job has its processes killed and ends FAILED
        through its own error path; a job waiting for a slot is ended FAILED here."""
        job = self._active.get(job_id)
        if job is None:
            return False
        if job.started:
            if not job.executor.stopped:  # the broadcast and the durable command both come
                log.info("job %s: stop requested; killing its task processes", job_id)
                await job.executor.cancel()
            return True
        if job.task is not None:
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        # A task cancelled before its first step never ran its own clean-up.
        if self._active.get(job_id) is job:
            del self._active[job_id]
        log.info("job %s: stop requested while waiting for a slot; ending it", job_id)
        await self.api.finish_job(job_id, FAILED, stop_log(job_id))
        await self.store.finish(job_id)
        return True

    async def stop(self, job_id: int) -> None:
        """Handle the durable stop command (one replica receives it): stop the job here if it
        is here; otherwise end it FAILED directly unless a live runner holds its run (that
        runner stops it on the broadcast, or at the latest between two tasks)."""
        if await self.stop_local(job_id):
            return
        run = await self.store.get(job_id)
        if (
            run is not None
            and run.status != RunStatus.FINISHED
            and not await self.store.claim(job_id)
        ):
            log.info("job %s: stop requested; left to runner %s, which holds it", job_id, run.owner)
            return
        log.info("job %s: stop requested while not executing anywhere; ending it", job_id)
        await self.api.finish_job(job_id, FAILED, stop_log(job_id))
        await self.store.finish(job_id)

    async def close(self) -> list[int]:
        """Cancel every execution (killing its processes) and release the leases: the runs
        stay unfinished, for another replica or the next start to resume. Returns the job ids
        of the released runs."""
        self._closing = True
        for loop in self._loops:
            loop.cancel()
        tasks = [job.task for job in self._active.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in [*self._loops, *tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()
        self._active.clear()
        try:
            released = await self.store.release()
        except Exception:  # noqa: BLE001 - the leases then simply expire
            log.warning("could not release the leases of this runner", exc_info=True)
            return []
        if released:
            log.info("released the leases of %d unfinished run(s)", len(released))
        return released

    # --- leases -----------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _sweep_delay(self, next_expiry: float | None) -> float:
        delay = self.store.lease.lease_seconds
        if next_expiry is not None:
            delay = min(delay, max(next_expiry, 0.0) + SWEEP_SLACK_SECONDS)
        return max(delay, SWEEP_SLACK_SECONDS)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.store.lease.renew_seconds)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        """Renew the leases of the jobs in this process; interrupt (without ending them) the
        jobs whose run another runner now holds, and those whose lease could not be renewed
        for so long that it may lapse before the next renewal."""
        jobs = list(self._active.values())
        if not jobs:
            return
        attempt_at = self._now()
        lost: set[int] = set()
        try:
            renewed, lost = await self.store.renew([job.job_id for job in jobs])
        except Exception:  # noqa: BLE001 - retried at the next interval
            log.warning("could not renew the leases of %d run(s)", len(jobs), exc_info=True)
        else:
            for job in jobs:
                if job.job_id in renewed:
                    job.leased_at = attempt_at
        lease = self.store.lease
        deadline = self._now() - (lease.lease_seconds - lease.renew_seconds)
        for job in jobs:
            if job.job_id in lost:
                self._interrupt(job, "its run is now held by another runner")
            elif job.leased_at <= deadline:
                self._interrupt(job, "its lease could not be renewed")

    def _interrupt(self, job: _ActiveJob, reason: str) -> None:
        if self._active.get(job.job_id) is not job or job.task is None:
            return
        log.warning("job %s: interrupted here, %s", job.job_id, reason)
        del self._active[job.job_id]
        job.task.cancel()

    def sweep_soon(self) -> None:
        """Run the orphan sweep now (another replica released runs)."""
        self._sweep_now.set()

    async def _sweep_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), self._next_sweep)
            self._sweep_now.clear()
            try:
                resumed = await self.resume()
            except Exception:  # noqa: BLE001 - retried at the next interval
                log.warning("orphan sweep failed", exc_info=True)
                self._next_sweep = self.store.lease.lease_seconds
                continue
            if resumed:
                log.info("resumed %d orphaned run(s)", len(resumed))

    # --- execution --------------------------------------------------------------------------

    def _launch(self, job_id: int, leased_at: float) -> None:
        if self._closing or job_id in self._active:
            return
        job = _ActiveJob(job_id=job_id, executor=self.executor_factory(), leased_at=leased_at)
        self._active[job_id] = job
        # Every log line of the job's task carries its id (fractal_grpc.logs).
        job.task = asyncio.create_task(
            self._run(job), name=f"job-{job_id}", context=logs.context_with(job_id=job_id)
        )

    async def _run(self, job: _ActiveJob) -> None:
        try:
            async with self._slots:
                job.started = True
                failures = 0
                while True:
                    try:
                        await self._execute(job)
                        return
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - the runner's database failed: try again
                        failures += 1
                        delay = BOOKKEEPING_BACKOFF.delay(failures)
                        log.warning(
                            "job %s: run bookkeeping failed; retrying in %.1fs",
                            job.job_id,
                            delay,
                            exc_info=True,
                        )
                        await asyncio.sleep(delay)
        finally:
            if self._active.get(job.job_id) is job:
                del self._active[job.job_id]

    async def _execute(self, job: _ActiveJob) -> None:
        """Attempts of the execution until the job has ended (or is gone, or given up).

        Errors of the runner's own database are raised (``_run`` tries again); an attempt
        that raised is judged by ``attempts.verdict``.
        """
        job_id = job.job_id
        failures = unexpected = 0
        while True:
            leased_at = self._now()
            attempts = await self.store.start_attempt(job_id)
            if attempts is None:
                log.info("job %s: run finished or held by another runner; not run here", job_id)
                return
            job.leased_at = leased_at
            log.info("job %s: executing (attempt %s, runner %s)", job_id, attempts, self.owner)
            ledger = await self._fresh_ledger(job_id)
            job.executor.ledger = ledger
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
            except Exception as exc:  # noqa: BLE001 - judged below
                error = f"{type(exc).__name__}: {exc}"
                judged = verdict(exc)
                if judged is Verdict.GONE:
                    log.warning("job %s: api no longer knows it; run ended", job_id)
                    await self._finish_run(job_id, ledger, error)
                    return
                failures += 1
                if judged is Verdict.UNEXPECTED:
                    unexpected += 1
                    log.exception("job %s: execution attempt failed unexpectedly", job_id)
                    if unexpected >= MAX_UNEXPECTED_ATTEMPTS:
                        log.error("job %s: given up after %s unexpected errors", job_id, unexpected)
                        await self.api.finish_job(
                            job_id, FAILED, unknown_error_log(job_id, traceback.format_exc())
                        )
                        await self._finish_run(job_id, ledger, error)
                        return
                await self.store.record_error(job_id, error)
                delay = self.attempt_backoff.delay(failures)
                if judged is Verdict.RETRY:
                    log.warning(
                        "job %s: interrupted by an error that is not the job's (%s); "
                        "trying again in %.1fs",
                        job_id,
                        error,
                        delay,
                    )
                await asyncio.sleep(delay)
                continue
            await self._finish_run(job_id, ledger)
            return

    async def _finish_run(
        self, job_id: int, ledger: ProcessLedger | None, error: str | None = None
    ) -> None:
        await self.store.finish(job_id, error=error)
        if ledger is not None:
            ledger.discard()

    async def _fresh_ledger(self, job_id: int) -> ProcessLedger | None:
        """The job's process ledger, after killing what an earlier attempt (a runner that
        crashed) left running."""
        if self.ledger_dir is None:
            return None
        path = self.ledger_dir / str(job_id)
        killed = await asyncio.to_thread(kill_leftovers, path)
        if killed:
            log.warning(
                "job %s: killed %d leftover task process(es) of an earlier attempt: %s",
                job_id,
                len(killed),
                killed,
            )
        return ProcessLedger(path)
