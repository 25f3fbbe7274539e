"""Run bookkeeping (the ``runs`` table) and the scheduler that executes jobs in the background.

Several runner replicas may share the table; a replica executes a run only while it holds the
run's lease (``fractal_runner.leases``).

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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Interval, and_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import transaction
from fractal_runner.api_client import JobExecutionClient
from fractal_runner.execution import FAILED, JobExecution, stop_log, unknown_error_log
from fractal_runner.leases import Instance, LeaseConfig
from fractal_runner.models import Run, RunStatus
from fractal_runner.taskproc import LocalExecutor
from fractal_runner.taskproc.ledger import ProcessLedger, kill_leftovers

log = logging.getLogger("fractal.runner")

#: Attempts of one execution within this process before its run is given up (each failed
#: attempt is an error talking to api that is not UNAVAILABLE, which is retried on its own).
MAX_ATTEMPTS = 5
RETRY_DELAY_SECONDS = 1.0
#: Pause before trying again when the runner's own database writes fail.
BOOKKEEPING_RETRY_SECONDS = 5.0
#: How long the last attempt to end a given-up job FAILED may wait for api.
GIVE_UP_FINISH_SECONDS = 30.0
#: The orphan sweep runs this long after the earliest lease of another replica would expire.
SWEEP_SLACK_SECONDS = 0.2


class RunStore:
    """The ``runner.runs`` rows, seen by one runner instance (the owner of its leases)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        instance: Instance | None = None,
        lease: LeaseConfig | None = None,
    ) -> None:
        self.sessions = sessions
        self.instance = instance or Instance.current()
        self.lease = lease or LeaseConfig()

    @property
    def owner(self) -> str:
        return self.instance.owner

    def _leased(self) -> dict[str, Any]:
        """The columns of a claim (or renewal) by this instance."""
        return {
            "owner": self.owner,
            "owner_process": self.instance.process,
            "lease_expires_at": func.now()
            + literal(timedelta(seconds=self.lease.lease_seconds), Interval()),
        }

    def _claimable(self) -> ColumnElement[bool]:
        """Not finished, and free, already ours, or with an expired lease."""
        return and_(
            Run.status != RunStatus.FINISHED,
            or_(
                Run.owner.is_(None),
                Run.owner == self.owner,
                Run.lease_expires_at.is_(None),
                Run.lease_expires_at < func.now(),
            ),
        )

    async def claim(self, job_id: int, *, create: bool = False) -> bool:
        """Take the run's lease (recording the run first when ``create``).

        False when the run is finished, held by another live instance, or (without
        ``create``) unknown.
        """
        async with transaction(self.sessions) as session:
            stmt: Any
            if create:
                stmt = (
                    insert(Run)
                    .values(job_id=job_id, **self._leased())
                    .on_conflict_do_update(
                        index_elements=[Run.job_id],
                        set_={**self._leased(), "updated_at": func.now()},
                        where=self._claimable(),
                    )
                )
            else:
                stmt = (
                    update(Run)
                    .where(Run.job_id == job_id, self._claimable())
                    .values(**self._leased(), updated_at=func.now())
                )
            result = await session.execute(stmt.returning(Run.job_id))
            return result.scalar_one_or_none() is not None

    async def start_attempt(self, job_id: int) -> int | None:
        """Mark the run running under this instance's lease (recording it if needed);
        returns its number of attempts, or None when the run is finished or another live
        instance holds it."""
        async with transaction(self.sessions) as session:
            stmt = (
                insert(Run)
                .values(job_id=job_id, status=RunStatus.RUNNING, attempts=1, **self._leased())
                .on_conflict_do_update(
                    index_elements=[Run.job_id],
                    set_={
                        "status": RunStatus.RUNNING,
                        "attempts": Run.attempts + 1,
                        "updated_at": func.now(),
                        **self._leased(),
                    },
                    where=self._claimable(),
                )
                .returning(Run.attempts)
            )
            attempts: int | None = (await session.execute(stmt)).scalar_one_or_none()
            return attempts

    async def renew(self, job_ids: Collection[int]) -> tuple[set[int], set[int]]:
        """Extend the leases of these runs; returns (renewed, lost): a run is lost when it is
        not finished and another live instance holds it now."""
        if not job_ids:
            return set(), set()
        async with transaction(self.sessions) as session:
            result = await session.execute(
                update(Run)
                .where(Run.job_id.in_(job_ids), self._claimable())
                .values(**self._leased())
                .returning(Run.job_id)
            )
            renewed = set(result.scalars())
            missing = set(job_ids) - renewed
            lost: set[int] = set()
            if missing:
                result = await session.execute(
                    select(Run.job_id).where(
                        Run.job_id.in_(missing), Run.status != RunStatus.FINISHED
                    )
                )
                lost = set(result.scalars())
            return renewed, lost

    async def release(self) -> list[int]:
        """Give up every lease of this instance on unfinished runs (graceful shutdown), so
        another instance can claim them at once; returns their job ids."""
        async with transaction(self.sessions) as session:
            result = await session.execute(
                update(Run)
                .where(Run.owner == self.owner, Run.status != RunStatus.FINISHED)
                .values(
                    owner=None, owner_process=None, lease_expires_at=None, updated_at=func.now()
                )
                .returning(Run.job_id)
            )
            return sorted(result.scalars())

    async def claim_orphans(self) -> tuple[list[int], float | None]:
        """Claim every unfinished run that has no owner, whose lease expired, or whose owner
        is a process of this host that no longer exists.

        Returns the claimed job ids (oldest run first) and the seconds until the earliest
        lease held by another instance expires (None when there is none).
        """
        async with transaction(self.sessions) as session:
            orphaned = [
                Run.owner.is_(None),
                Run.lease_expires_at.is_(None),
                Run.lease_expires_at < func.now(),
            ]
            dead = await self._gone_local_owners(session)
            if dead:
                orphaned.append(Run.owner.in_(dead))
            result = await session.execute(
                select(Run.job_id)
                .where(Run.status != RunStatus.FINISHED, or_(*orphaned))
                .order_by(Run.created_at, Run.job_id)
                .with_for_update(skip_locked=True)
            )
            job_ids = list(result.scalars())
            if job_ids:
                await session.execute(
                    update(Run)
                    .where(Run.job_id.in_(job_ids))
                    .values(**self._leased(), updated_at=func.now())
                )
            result = await session.execute(
                select(func.extract("epoch", func.min(Run.lease_expires_at) - func.now())).where(
                    Run.status != RunStatus.FINISHED,
                    Run.owner.is_not(None),
                    Run.owner != self.owner,
                )
            )
            next_expiry = result.scalar_one_or_none()
            return job_ids, None if next_expiry is None else float(next_expiry)

    async def _gone_local_owners(self, session: AsyncSession) -> list[str]:
        """Owners of live leases that are processes of this host which no longer exist."""
        host = self.instance.host
        if host is None:
            return []
        result = await session.execute(
            select(Run.owner, Run.owner_process)
            .distinct()
            .where(
                Run.status != RunStatus.FINISHED,
                Run.owner != self.owner,
                Run.lease_expires_at >= func.now(),
                Run.owner_process.startswith(f"{host}/", autoescape=True),
            )
        )
        return [
            owner
            for owner, process in result.all()
            if owner is not None and process is not None and self.instance.process_is_gone(process)
        ]

    async def record_error(self, job_id: int, error: str) -> None:
        await self._update(job_id, last_error=error)

    async def finish(self, job_id: int, error: str | None = None) -> None:
        """Mark the run finished (no-op for an unknown run); it keeps its owner, not its lease."""
        values: dict[str, object] = {"status": RunStatus.FINISHED, "lease_expires_at": None}
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
        executor_factory: Callable[[], LocalExecutor] = LocalExecutor,
        retry_delay: float = RETRY_DELAY_SECONDS,
        ledger_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.api = api
        self.backend = backend
        self.local_config_file = local_config_file
        self.executor_factory = executor_factory
        self.retry_delay = retry_delay
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
            except Exception as exc:  # noqa: BLE001 - retried, then given up
                error = f"{type(exc).__name__}: {exc}"
                log.exception("job %s: execution attempt failed", job_id)
                if attempt == MAX_ATTEMPTS:
                    log.error("job %s: given up after %s attempts", job_id, attempt)
                    await self._give_up(job_id, traceback.format_exc())
                    await self.store.finish(job_id, error=error)
                    if ledger is not None:
                        ledger.discard()
                    return
                await self.store.record_error(job_id, error)
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            await self.store.finish(job_id)
            if ledger is not None:
                ledger.discard()
            return

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

    async def _give_up(self, job_id: int, trace: str) -> None:
        """Best effort: end the job FAILED, so it does not stay SUBMITTED."""
        try:
            await asyncio.wait_for(
                self.api.finish_job(job_id, FAILED, unknown_error_log(job_id, trace)),
                GIVE_UP_FINISH_SECONDS,
            )
        except Exception:  # noqa: BLE001 - nothing more can be done from here
            log.exception("job %s: could not end it FAILED", job_id)
