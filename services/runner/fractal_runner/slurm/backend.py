"""The ``slurm_sudo`` backend of the runner process: one poller per (cluster, user), shared by
every run, and a per-job executor bound to its job's user and folders.

:class:`SlurmSudoBackend` lives as long as the runner process. It validates the SLURM config file
at start (``check_config``; the executor re-reads it for every task), counts every scheduler call
(``calls``) and hands out one :class:`SlurmPoller` per cluster user, created on first use.

:class:`SlurmJobExecutor` is what the scheduler creates per job (the executor interface of
``fractal_runner.taskproc.executor``). It only knows its job once ``bind_job`` gets the job's
spec: the SLURM user (``slurm_user``), the user-side job folder (``working_dir_user``, under the
user's ``cache_dir``, reference §5.9/§7.5), the job's ``slurm_account`` and ``worker_init``.
Every SLURM job it submits is recorded in ``runner.slurm_jobs`` (``records``) and carries its
record's tag as ``--comment`` (``fractal:{deployment}:job{job_id}:rec{id}:calls=…``); without
records (executor tests) the comment is ``fractal-job-{job_id}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal_grpc.ssh.connection import SshConnection, SshTarget
from fractal_runner.slurm.config_file import load_slurm_config_file
from fractal_runner.slurm.job_records import SlurmJobRecords
from fractal_runner.slurm.poller import DEFAULT_LOST_AFTER_SECONDS, SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands
from fractal_runner.slurm.ssh_commands import SshSlurmCommands
from fractal_runner.slurm.sudo_executor import SlurmSudoExecutor
from fractal_runner.taskproc.calls import JobExecutionError, JobStopped, TaskCall
from fractal_runner.taskproc.ledger import ProcessLedger

__all__ = ["SlurmJobExecutor", "SlurmSshBackend", "SlurmSudoBackend", "job_comment", "user_job_dir"]

log = logging.getLogger(__name__)

Outcome = dict[str, Any] | None


def job_comment(job_id: int) -> str:
    """The ``--comment`` of every SLURM job of a Fractal job (to find them again)."""
    return f"fractal-job-{job_id}"


def user_job_dir(spec: pb.JobSpec, default_base: Path | None = None) -> Path:
    """The user-side job folder: ``working_dir_user`` when api set one apart from the runner's
    folder, else ``{base}/{name of the runner's folder}`` with base the user's ``cache_dir``
    (slurm_sudo) or ``default_base`` (slurm_ssh: the runner's remote base dir)."""
    name = Path(spec.working_dir).name
    if spec.working_dir_user and spec.working_dir_user != spec.working_dir:
        path = Path(spec.working_dir_user)
    elif default_base is not None:
        path = default_base / name
    elif spec.HasField("user_cache_dir") and spec.user_cache_dir:
        path = Path(spec.user_cache_dir) / name
    else:
        raise JobExecutionError("The job's user has no cache_dir: it cannot run on SLURM.")
    if not path.is_absolute():
        raise JobExecutionError(f"The user-side job folder {str(path)!r} is not absolute.")
    return path


class SlurmSudoBackend:
    """Process-wide state of the slurm_sudo backend (see the module docstring)."""

    def __init__(
        self,
        *,
        config_file: Path,
        poll_interval: float,
        worker_python: str,
        worker_pythonpath: str | None = None,
        cluster: str = "slurm",
        records: SlurmJobRecords | None = None,
        lost_after: float = DEFAULT_LOST_AFTER_SECONDS,
    ) -> None:
        self.config_file = config_file
        self.poll_interval = poll_interval
        self.worker_python = worker_python
        self.worker_env = {"PYTHONPATH": worker_pythonpath} if worker_pythonpath else {}
        self.cluster = cluster
        self.calls = SchedulerCalls()
        #: The runner's record of its SLURM jobs (None: not kept, e.g. in executor tests).
        self.records = records
        self.lost_after = lost_after
        self._pollers: dict[str, SlurmPoller] = {}

    def check_config(self) -> None:
        """Validate the config file now (raises SlurmConfigError with what is wrong)."""
        load_slurm_config_file(self.config_file)

    def poller(self, user: str) -> SlurmPoller:
        """The one poller of ``user`` on this cluster (created on first use)."""
        poller = self._pollers.get(user)
        if poller is None:
            commands = SlurmCommands(
                cluster=self.cluster, user=user, calls=self.calls, sudo_user=user
            )
            poller = SlurmPoller(commands, interval=self.poll_interval, lost_after=self.lost_after)
            self._pollers[user] = poller
        return poller

    @property
    def pollers(self) -> dict[str, SlurmPoller]:
        return dict(self._pollers)

    def executor(self) -> SlurmJobExecutor:
        return SlurmJobExecutor(self)

    #: The job reads its files in the runner's folder (same machine, or a shared disk).
    files_shared = True
    #: The config's pre_submission_commands are ignored with a warning, as in the reference.
    runs_pre_submission_commands = False

    def job_user_and_dir(self, spec: pb.JobSpec) -> tuple[str, Path]:
        """Who runs the job's SLURM jobs, and their folder (JobExecutionError if the job's user
        cannot run on SLURM)."""
        if not spec.HasField("slurm_user") or not spec.slurm_user:
            raise JobExecutionError("The job's user has no slurm_user: it cannot run on SLURM.")
        return spec.slurm_user, user_job_dir(spec)

    async def close(self) -> None:
        for poller in self._pollers.values():
            await poller.close()
        self._pollers.clear()


class SlurmSshBackend(SlurmSudoBackend):
    """The slurm_ssh backend: every job runs as the one SSH service user, over one shared
    connection (``ssh_connection``), in ``{remote_base_dir}/{job folder name}``; job files go
    over in one archive per batch and come back in one per SLURM job."""

    files_shared = False
    #: A wrapper script runs the config's pre_submission_commands before each sbatch (§7.6).
    runs_pre_submission_commands = True

    def __init__(self, *, target: SshTarget, remote_base_dir: Path, **options: Any) -> None:
        super().__init__(**options)
        self.connection = SshConnection(target)
        self.remote_base_dir = remote_base_dir

    def poller(self, user: str) -> SlurmPoller:
        poller = self._pollers.get(user)
        if poller is None:
            commands = SshSlurmCommands(
                cluster=self.cluster,
                connection=self.connection,
                calls=self.calls,
                worker_python=self.worker_python,
                worker_env=self.worker_env,
            )
            poller = SlurmPoller(commands, interval=self.poll_interval, lost_after=self.lost_after)
            self._pollers[user] = poller
        return poller

    def job_user_and_dir(self, spec: pb.JobSpec) -> tuple[str, Path]:
        """The SSH user, and the job's remote folder: the ``working_dir_user`` api recorded
        (``{FRACTAL_SLURM_SSH_WORKING_BASE_DIR}/{folder name}``, reference §7.6) when it set
        one, else the same place under this runner's own setting."""
        return self.connection.target.user, user_job_dir(spec, self.remote_base_dir)

    async def close(self) -> None:
        await super().close()
        await self.connection.close()


class SlurmJobExecutor:
    """The executor of one job on slurm_sudo; usable once ``bind_job`` has run."""

    def __init__(self, backend: SlurmSudoBackend) -> None:
        self.backend = backend
        #: Set by the scheduler like the local executor's; SLURM jobs are not local processes.
        self.ledger: ProcessLedger | None = None
        self._inner: SlurmSudoExecutor | None = None
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def submitted_job_ids(self) -> list[str]:
        return [] if self._inner is None else list(self._inner.submitted_job_ids)

    def bind_job(self, spec: pb.JobSpec) -> None:
        """Take the job's user, folders, account and worker_init (JobExecutionError if the
        job's user cannot run on SLURM)."""
        user, user_dir = self.backend.job_user_and_dir(spec)
        poller = self.backend.poller(user)
        self._inner = SlurmSudoExecutor(
            commands=poller.commands,
            poller=poller,
            config_file=self.backend.config_file,
            local_dir=Path(spec.working_dir),
            user_dir=user_dir,
            worker_python=self.backend.worker_python,
            worker_env=self.backend.worker_env,
            slurm_account=spec.slurm_account if spec.HasField("slurm_account") else None,
            worker_init=spec.worker_init if spec.HasField("worker_init") else None,
            job_comment=job_comment(spec.job_id),
            records=self.backend.records,
            fractal_job_id=spec.job_id,
            files_shared=self.backend.files_shared,
            runs_pre_submission_commands=self.backend.runs_pre_submission_commands,
        )

    async def run_calls(
        self,
        calls: Sequence[TaskCall],
        *,
        concurrency: int | None = None,
        meta: Mapping[str, Any] | None = None,
        task_name: str = "task",
    ) -> list[Outcome]:
        if self._stopped:
            raise JobStopped()
        if self._inner is None:
            raise JobExecutionError("The SLURM executor was not bound to its job.")
        return await self._inner.run_calls(
            calls, concurrency=concurrency, meta=meta, task_name=task_name
        )

    async def cancel(self) -> None:
        self._stopped = True
        if self._inner is not None:
            await self._inner.cancel()
