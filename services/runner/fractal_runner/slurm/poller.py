"""One :class:`SlurmPoller` per (cluster, user), shared by every run of the runner process.

Each round (every ``interval`` seconds, while it watches anything, counted from when the previous
round was due, so slow calls do not stretch the period) makes **one** squeue call for all the job
ids it watches. The ids that squeue no longer lists are looked up in **one** sacct
call; each job sacct reports in a final state resolves at once (its own future), whatever
happens to the others. Nothing is concluded from a failed call: squeue or sacct failing, timing
out or answering garbage means "unknown, ask again" at the next round (the reference took a
missing job, or an SSH error, as COMPLETED). A job listed by neither squeue nor sacct for
``lost_after`` seconds resolves with the state UNKNOWN, so nothing is watched forever.

squeue is run with its default state filter (pending, running, completing, …), so a finished job
leaves its listing and its final state and exit code come from sacct, which also reports the
steps (one per task call). Every call is counted in :class:`SchedulerCalls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fractal_runner.slurm.job_end import FINAL_STATES, UNKNOWN, JobEnd, parse_sacct, parse_squeue
from fractal_runner.slurm.scheduler import SchedulerCallFailed, SlurmCommands

__all__ = ["SlurmPoller", "next_round"]

logger = logging.getLogger(__name__)

DEFAULT_LOST_AFTER_SECONDS = 120.0
_INVALID_ID = "Invalid job id specified"
_SACCT_FORMAT = "JobID,JobName,State,ExitCode"


class SlurmPoller:
    """Watches SLURM jobs of one (cluster, user); see the module docstring."""

    def __init__(
        self,
        commands: SlurmCommands,
        *,
        interval: float,
        lost_after: float = DEFAULT_LOST_AFTER_SECONDS,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.commands = commands
        self.interval = interval
        self.lost_after = lost_after
        self._watched: dict[str, asyncio.Future[JobEnd]] = {}
        self._unseen_since: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def watch(self, job_id: str) -> asyncio.Future[JobEnd]:
        """The future of ``job_id``'s end; watching an id twice gives the same future."""
        if job_id not in self._watched:
            self._watched[job_id] = asyncio.get_running_loop().create_future()
            self._wakeup.set()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._loop(), name="slurm-poller")
        return self._watched[job_id]

    def forget(self, job_id: str) -> None:
        """Stop watching ``job_id`` (its future is cancelled if still pending)."""
        future = self._watched.pop(job_id, None)
        self._unseen_since.pop(job_id, None)
        if future is not None and not future.done():
            future.cancel()

    @property
    def watched(self) -> list[str]:
        return list(self._watched)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job_id in list(self._watched):
            self.forget(job_id)

    async def _loop(self) -> None:
        clock = asyncio.get_running_loop().time
        due = clock() + self.interval
        while True:
            if not self._watched:
                self._wakeup.clear()
                await self._wakeup.wait()
                due = clock() + self.interval
            await asyncio.sleep(max(0.0, due - clock()))
            try:
                await self.poll_once()
            except Exception:  # never let one bad round end the watching
                logger.exception("SLURM poll round failed; retrying at the next interval")
            due = next_round(due, self.interval, clock())

    async def poll_once(self) -> None:
        """One round: one squeue for every watched id, one sacct for those squeue left out."""
        ids = list(self._watched)
        if not ids:
            return
        self.rounds += 1
        listed = await self._squeue(ids)
        if listed is None:
            return
        now = time.monotonic()
        gone = [i for i in ids if i not in listed]
        for job_id in ids:
            if job_id in listed:
                self._unseen_since.pop(job_id, None)
        if not gone:
            return
        ended = await self._sacct(gone)
        if ended is None:
            return
        for job_id in gone:
            end = ended.get(job_id)
            if end is not None and end.state in FINAL_STATES:
                self._resolve(job_id, end)
            elif end is None:
                first = self._unseen_since.setdefault(job_id, now)
                if now - first >= self.lost_after:
                    self._resolve(job_id, JobEnd(job_id, UNKNOWN))
            # else: sacct still shows it running (accounting lags squeue): ask again

    async def _squeue(self, ids: list[str]) -> set[str] | None:
        argv = ["squeue", "--noheader", "--format=%i|%T", f"--jobs={','.join(ids)}"]
        try:
            result = await self.commands.run(argv, n_ids=len(ids))
        except SchedulerCallFailed as e:
            logger.warning("squeue failed (%s); job states unknown until the next round", e)
            return None
        if result.returncode != 0:
            if _INVALID_ID in result.stderr:  # none of the ids is known to slurmctld any more
                return set()
            logger.warning(
                "squeue exited %d (%s); job states unknown until the next round",
                result.returncode,
                result.stderr.strip()[:500],
            )
            return None
        return set(parse_squeue(result.stdout))

    async def _sacct(self, ids: list[str]) -> dict[str, JobEnd] | None:
        argv = [
            "sacct",
            "--noheader",
            "--parsable2",
            f"--jobs={','.join(ids)}",
            f"--format={_SACCT_FORMAT}",
        ]
        try:
            result = await self.commands.run(argv, n_ids=len(ids))
        except SchedulerCallFailed as e:
            logger.warning("sacct failed (%s); asking again at the next round", e)
            return None
        if result.returncode != 0:
            logger.warning(
                "sacct exited %d (%s); asking again at the next round",
                result.returncode,
                result.stderr.strip()[:500],
            )
            return None
        return parse_sacct(result.stdout)

    def _resolve(self, job_id: str, end: JobEnd) -> None:
        future = self._watched.pop(job_id, None)
        self._unseen_since.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(end)


def next_round(due: float, interval: float, now: float) -> float:
    """When the round after one due at ``due`` starts: one ``interval`` later, so the
    time the calls take does not stretch the period; rounds a slow call overran are skipped
    (the next one is the first on that grid after ``now``), never made up in a burst."""
    following = due + interval
    if following > now:
        return following
    return now + interval - (now - following) % interval
