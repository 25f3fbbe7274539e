"""SLURM commands over the shared SSH connection (the ``slurm_ssh`` backend).

:class:`SshSlurmCommands` gives the executor and the poller the ``run`` of
:class:`~fractal_runner.slurm.scheduler.SlurmCommands`, over SSH as the one service user, and
``put_archive`` to unpack one archive of job files remotely. Every call is counted and logged as
for sudo.

A lost connection (:class:`~fractal_grpc.ssh.connection.SshConnectionLost`):
- a command that changes nothing, or that can be repeated with the same effect (squeue, sacct,
  mkdir -p, tar, scancel, the version check), is retried on a new connection a few times, with
  a growing pause;
- ``sbatch`` is not: the job may or may not exist, which is reported as such
  (:class:`SchedulerCallFailed` naming the lost connection; the runner's record of the job stays
  "submitting" and is looked up by its tag before anything is submitted again).
Either way a failure is "unknown, ask again", never "finished".

The remote worker Python is checked once per connection (``--versions`` of the worker module:
cloudpickle and the worker protocol must match): a mismatch fails every submission with the
versions on both sides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from collections.abc import Mapping, Sequence

from fractal_grpc.ssh.connection import SshConnection, SshConnectionLost
from fractal_runner.slurm.scheduler import (
    CommandResult,
    SchedulerCallFailed,
    SchedulerCalls,
    SlurmCommands,
)
from fractal_runner.slurm.script import WORKER_MODULE
from fractal_runner.slurm.worker import STRICT_VERSIONS, versions

__all__ = ["SshSlurmCommands", "WorkerVersionMismatch"]

logger = logging.getLogger(__name__)

#: Commands that may be sent again after a lost connection (nothing changes twice).
REPEATABLE = frozenset({"squeue", "sacct", "scancel", "mkdir", "tar", "sh"})
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)


class WorkerVersionMismatch(SchedulerCallFailed):
    """The remote worker Python does not match the runner (or cannot run the worker)."""


class SshSlurmCommands(SlurmCommands):
    """SLURM commands of the SSH service user, over one shared :class:`SshConnection`."""

    def __init__(
        self,
        *,
        cluster: str,
        connection: SshConnection,
        calls: SchedulerCalls,
        worker_python: str,
        worker_env: Mapping[str, str] | None = None,
        retry_pauses: Sequence[float] = RETRY_PAUSES,
    ) -> None:
        super().__init__(cluster=cluster, user=connection.target.user, calls=calls)
        self.connection = connection
        self.worker_python = worker_python
        self.worker_env = dict(worker_env or {})
        self.retry_pauses = tuple(retry_pauses)
        self._checked_generation = 0
        self._check_lock = asyncio.Lock()

    async def run(
        self,
        argv: Sequence[str],
        *,
        n_ids: int = 0,
        as_user: bool = False,
        command: str | None = None,
        stdin: bytes = b"",
    ) -> CommandResult:
        command = command or argv[0]
        if command == "sbatch":
            await self.check_worker()
        attempts = 1 + (len(self.retry_pauses) if command in REPEATABLE else 0)
        for attempt in range(attempts):
            self.calls.add(self.cluster, self.user, command)
            started = time.monotonic()
            try:
                rc, out, err = await self.connection.exec(
                    shlex.join(argv), stdin=stdin or None, seconds=self.timeout
                )
            except SshConnectionLost as e:
                self._log(command, n_ids, f"connection lost ({e})", started)
                if attempt + 1 < attempts:
                    await asyncio.sleep(self.retry_pauses[attempt])
                    continue
                if command in REPEATABLE:
                    raise SchedulerCallFailed(
                        f"{command} over SSH failed {attempts} times: {e}"
                    ) from None
                raise SchedulerCallFailed(
                    f"the SSH connection was lost during {command}; whether it took effect is "
                    f"unknown ({e})"
                ) from None
            self._log(command, n_ids, f"exit {rc}", started)
            return CommandResult(
                rc, out.decode(errors="replace"), err.decode(errors="replace"), out
            )
        raise AssertionError("unreachable")

    async def put_archive(self, archive: bytes, remote_dir: str) -> None:
        """Unpack the tar archive ``archive`` into ``remote_dir`` (created if needed)."""
        script = f"mkdir -p {shlex.quote(remote_dir)} && tar -xf - -C {shlex.quote(remote_dir)}"
        result = await self.run(["sh", "-c", script], stdin=archive)
        if result.returncode != 0:
            raise SchedulerCallFailed(
                f"cannot unpack the job files in {remote_dir}: {result.stderr.strip()[:2000]}"
            )

    async def check_worker(self) -> None:
        """The remote worker's versions, checked once per SSH connection."""
        async with self._check_lock:
            if self._checked_generation and self._checked_generation == self.connection.generation:
                return
            env = [f"{k}={v}" for k, v in self.worker_env.items()]
            argv = ["env", *env, self.worker_python, "-m", WORKER_MODULE, "--versions"]
            result = await self._run_repeatable(argv)
            if result.returncode != 0:
                raise WorkerVersionMismatch(
                    f"the remote worker Python {self.worker_python} cannot run the worker: "
                    f"{result.stderr.strip()[-2000:]}"
                )
            try:
                theirs = json.loads(result.stdout)
            except ValueError:
                raise WorkerVersionMismatch(
                    f"the remote worker Python {self.worker_python} printed no versions: "
                    f"{result.stdout.strip()[:500]}"
                ) from None
            ours = versions()
            diff = [k for k in STRICT_VERSIONS if theirs.get(k) != ours[k]]
            if diff:
                details = ", ".join(
                    f"{k} {ours[k]} on the runner, {theirs.get(k)} remotely" for k in diff
                )
                raise WorkerVersionMismatch(
                    f"Version mismatch between the runner and the remote worker Python "
                    f"{self.worker_python}: {details}."
                )
            self._checked_generation = self.connection.generation
            logger.info(
                "remote worker %s checked on SSH connection %d: %s",
                self.worker_python,
                self.connection.generation,
                theirs,
            )

    async def _run_repeatable(self, argv: list[str]) -> CommandResult:
        # "env" is not in REPEATABLE by name; the version check changes nothing.
        return await self.run(["sh", "-c", shlex.join(argv)])
