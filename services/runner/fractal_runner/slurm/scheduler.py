"""Calls to SLURM's commands (sbatch, squeue, sacct, scancel), each counted and logged.

:class:`SchedulerCalls` counts the calls per (cluster, user, command) for its owner (a backend,
a test, a benchmark) and adds each one to the process-wide prometheus_client counter
``fractal_runner_scheduler_calls_total{cluster, user, kind}`` (kind: sbatch, squeue, sacct,
scancel, ...; picked up by the runner's metrics endpoint from the default registry). Every call
also logs one line (command, number of job ids, exit status, duration), so benchmarks and
operators can see how often the scheduler is asked.

:class:`SlurmCommands` runs the commands as local processes, optionally through
``sudo --non-interactive -u {user}`` (the slurm_sudo backend); the ssh backend will provide the
same ``run`` over a connection. A command that cannot be started, times out or exits non-zero
gives a :class:`SchedulerCallFailed` (an answer we must not interpret: "unknown, ask again").
A command that answered while the event loop was held up past the timeout is not timed out: the
loop gets :data:`STALL_GRACE_SECONDS` more to read the answer (a 10,000-call task's input files,
written on the loop, once made a concurrent run's ``mkdir`` "time out" after it had answered).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter

__all__ = [
    "CommandResult",
    "SbatchRefused",
    "SchedulerCallFailed",
    "SchedulerCalls",
    "SlurmCommands",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0
#: After the timeout, how long a running event loop gets to deliver an answer that came while
#: the loop was held up (by synchronous work of the process): the timer and the answer are then
#: ready together, and the timer must not win.
STALL_GRACE_SECONDS = 1.0


class SchedulerCallFailed(RuntimeError):
    """A SLURM command did not answer usably; what it was asked stays unknown."""


class SbatchRefused(SchedulerCallFailed):
    """sbatch answered, and refused the job: it does not exist."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    raw_stdout: bytes = b""


#: Every scheduler call of the process, in prometheus_client's default registry.
SCHEDULER_CALLS = Counter(
    "fractal_runner_scheduler_calls_total",
    "Calls of SLURM commands by the runner.",
    ["cluster", "user", "kind"],
)


class SchedulerCalls:
    """How many times each SLURM command was called, per (cluster, user)."""

    NAME = "fractal_runner_scheduler_calls_total"

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def add(self, cluster: str, user: str, command: str) -> None:
        self._counts[(cluster, user, command)] += 1
        SCHEDULER_CALLS.labels(cluster=cluster, user=user, kind=command).inc()

    def count(self, command: str, *, cluster: str | None = None, user: str | None = None) -> int:
        return sum(
            n
            for (c, u, cmd), n in self._counts.items()
            if cmd == command and cluster in (None, c) and user in (None, u)
        )

    def render(self) -> str:
        """The counter in the Prometheus text format."""
        lines = [
            f"# HELP {self.NAME} Calls of SLURM commands by the runner.",
            f"# TYPE {self.NAME} counter",
        ]
        for (cluster, user, command), n in sorted(self._counts.items()):
            labels = f'cluster="{cluster}",user="{user}",kind="{command}"'
            lines.append(f"{self.NAME}{{{labels}}} {n}")
        return "\n".join(lines) + "\n"


class SlurmCommands:
    """Runs SLURM commands for one (cluster, user) and counts every call."""

    def __init__(
        self,
        *,
        cluster: str,
        user: str,
        calls: SchedulerCalls,
        sudo_user: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.cluster = cluster
        self.user = user
        self.calls = calls
        self.sudo_user = sudo_user
        self.timeout = timeout

    async def run(
        self,
        argv: Sequence[str],
        *,
        n_ids: int = 0,
        as_user: bool = False,
        command: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (through sudo when ``as_user`` and a sudo user is set), counted as
        ``command`` (default: ``argv[0]``); never raises for a non-zero exit, only
        SchedulerCallFailed when the command could not run or timed out."""
        command = command or argv[0]
        full = list(argv)
        if as_user and self.sudo_user is not None:
            full = ["sudo", "--non-interactive", "-u", self.sudo_user, *full]
        self.calls.add(self.cluster, self.user, command)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            self._log(command, n_ids, f"not started ({e})", started)
            raise SchedulerCallFailed(f"cannot run {command}: {e}") from e
        answer = asyncio.ensure_future(process.communicate())
        try:
            done, _ = await asyncio.wait({answer}, timeout=self.timeout)
            if not done:  # the loop may have been held up: one more look before giving up
                done, _ = await asyncio.wait({answer}, timeout=STALL_GRACE_SECONDS)
        except asyncio.CancelledError:
            answer.cancel()
            raise
        if not done:
            answer.cancel()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self._log(command, n_ids, "timed out", started)
            raise SchedulerCallFailed(
                f"{command} did not answer within {self.timeout:g} s"
            ) from None
        out, err = answer.result()
        rc = process.returncode
        assert rc is not None
        self._log(command, n_ids, f"exit {rc}", started)
        return CommandResult(rc, out.decode(errors="replace"), err.decode(errors="replace"), out)

    async def sbatch(self, script: str, wrapper: str | None = None) -> str:
        """Submit the script file ``script`` as the user; the job id (SchedulerCallFailed if
        sbatch refuses it, with sbatch's own message). With ``wrapper`` (a script that runs the
        pre-submission commands, then ``sbatch --parsable``; :func:`script.wrapper_script`),
        ``bash {wrapper}`` runs instead, counted as sbatch; the id is its last line."""
        argv = ["sbatch", "--parsable", script] if wrapper is None else ["bash", wrapper]
        result = await self.run(argv, as_user=True, command="sbatch")
        lines = result.stdout.strip().splitlines()
        job_id = lines[-1].strip().split(";")[0] if lines else ""
        if result.returncode != 0 or not job_id.isdigit():
            detail = (result.stderr.strip() or result.stdout.strip())[:2000]
            if result.returncode != 0:
                raise SbatchRefused(f"sbatch refused {script}: {detail}")
            raise SchedulerCallFailed(f"sbatch gave no job id for {script}: {detail}")
        return job_id

    async def scancel(self, job_ids: Sequence[str]) -> None:
        """Cancel ``job_ids`` as the user (one call); SchedulerCallFailed if scancel fails."""
        if not job_ids:
            return
        result = await self.run(["scancel", *job_ids], n_ids=len(job_ids), as_user=True)
        if result.returncode != 0:
            raise SchedulerCallFailed(f"scancel failed: {result.stderr.strip()[:2000]}")

    def _log(self, command: str, n_ids: int, status: str, started: float) -> None:
        logger.info(
            "slurm call %s cluster=%s user=%s ids=%d: %s in %.3f s (total %s calls: %d)",
            command,
            self.cluster,
            self.user,
            n_ids,
            status,
            time.monotonic() - started,
            command,
            self.calls.count(command, cluster=self.cluster, user=self.user),
        )
