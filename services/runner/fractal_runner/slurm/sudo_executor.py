"""The ``slurm_sudo`` executor: a task's calls as SLURM jobs of the job's user (reference §7.5).

The runner (a service user) submits as the user with ``sudo -u {slurm_user}``. Folders (§5.9):
the input files (cloudpickle) and sbatch scripts are written in the runner's own job folder
(``local_dir``, readable by the user); the task files (args, log, metadiff), the worker outcomes
and SLURM's stdout/stderr are written by the job in the user's folder (``user_dir``, under the
user's cache_dir) and copied back into ``local_dir`` when the job ends, in one
``sudo -u {user} tar`` per job.

Per ``run_calls``: the SLURM config file is re-read, merged with the task part's meta
(:mod:`~fractal_runner.slurm.task_config`), the calls are split by the batching heuristics
(:mod:`~fractal_runner.slurm.batching`) into jobs with in-job queues, and each job is watched by
the shared :class:`~fractal_runner.slurm.poller.SlurmPoller`. A job's calls resolve when the
poller sees it finished. Like the local executor it fails fast: the first failure cancels the
other jobs; a TaskExecutionError wins over a JobExecutionError, then the lowest call index. A
call without an outcome gets SLURM's reason (out of memory, time limit, cancelled, …) and the
tails of the job's stdout/stderr, not "output pickle not found". ``cancel`` scancels every job.

Per-call resume as in the local executor: the calls with a completion record
(``taskproc.completions``) are not submitted again; a call whose outcome came back "done" is
recorded (in the runner's folder) before it counts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fractal_runner.slurm.batching import BatchingLimits, batching_heuristics, split_into_batches
from fractal_runner.slurm.config_file import load_slurm_config_file
from fractal_runner.slurm.errors import SlurmConfigError, SlurmHeuristicsError
from fractal_runner.slurm.job_end import JobEnd, describe_job_end
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import CommandResult, SchedulerCallFailed, SlurmCommands
from fractal_runner.slurm.script import JobCall, SlurmJobSpec, sbatch_script
from fractal_runner.slurm.task_config import SlurmConfig, task_slurm_config, with_job_settings
from fractal_runner.slurm.worker import read_worker_file, write_input_file
from fractal_runner.taskproc.calls import (
    JobExecutionError,
    JobStopped,
    TaskCall,
    TaskExecutionError,
)
from fractal_runner.taskproc.completions import load_completions, record_completion
from fractal_runner.taskproc.layout import CallPaths

__all__ = ["SlurmSudoExecutor"]

logger = logging.getLogger(__name__)

Outcome = dict[str, Any] | None
TAIL_BYTES = 4000


@dataclass(frozen=True)
class _Job:
    """One SLURM job of a run_calls: which calls it runs and where its files are."""

    indices: range
    slurm_prefix: str
    subfolder: str
    script: Path


class SlurmSudoExecutor:
    """Runs task calls as SLURM jobs of ``commands.sudo_user``; one instance per job."""

    def __init__(
        self,
        *,
        commands: SlurmCommands,
        poller: SlurmPoller,
        config_file: Path,
        local_dir: Path,
        user_dir: Path,
        worker_python: str,
        worker_env: Mapping[str, str] | None = None,
        slurm_account: str | None = None,
        worker_init: str | None = None,
        job_comment: str | None = None,
    ) -> None:
        self.commands = commands
        self.poller = poller
        self.config_file = config_file
        self.local_dir = local_dir
        self.user_dir = user_dir
        self.worker_python = worker_python
        self.worker_env = dict(worker_env or {})
        self.slurm_account = slurm_account
        self.worker_init = worker_init
        #: ``--comment`` of every SLURM job (a tag to find the jobs again, e.g. after a restart)
        self.job_comment = job_comment
        self._stopped = False
        self._active: set[str] = set()
        self._cancelled: set[str] = set()  # by us: their calls without outcome are not failures
        #: Every SLURM job id this executor submitted, in order.
        self.submitted_job_ids: list[str] = []

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def run_calls(
        self,
        calls: Sequence[TaskCall],
        *,
        concurrency: int | None = None,
        meta: Mapping[str, Any] | None = None,
        task_name: str = "task",
    ) -> list[Outcome]:
        """Run every call on SLURM; the outputs in input order (errors as the local executor's).

        ``concurrency`` is the local executor's knob and is ignored: SLURM's batching comes from
        the config file and ``meta`` (tasks_per_job, parallel_tasks_per_job)."""
        if self._stopped:
            raise JobStopped()
        if not calls:
            return []
        completed = await asyncio.to_thread(load_completions, calls)
        pending = [index for index in range(len(calls)) if index not in completed]
        if completed:
            logger.info(
                "%d of %d calls already completed: not run again", len(completed), len(calls)
            )
        outputs = await self._run_pending([calls[i] for i in pending], meta, task_name)
        results: list[Outcome] = [None] * len(calls)
        for index, completion in completed.items():
            results[index] = completion.output
        for index, output in zip(pending, outputs, strict=True):
            results[index] = output
        return results

    async def _run_pending(
        self, calls: Sequence[TaskCall], meta: Mapping[str, Any] | None, task_name: str
    ) -> list[Outcome]:
        if not calls:
            return []
        config = self._config(meta, task_name)
        try:
            tasks_per_job, parallel = batching_heuristics(
                tot_tasks=len(calls),
                tasks_per_job=config.tasks_per_job,
                parallel_tasks_per_job=config.parallel_tasks_per_job,
                cpus_per_task=config.cpus_per_task,
                mem_per_task=config.mem_per_task_mb,
                limits=_limits(config),
            )
        except SlurmHeuristicsError as e:
            raise JobExecutionError(f"SLURM batching failed: {e}") from None
        jobs = self._plan(calls, tasks_per_job)
        await self._make_user_folders({job.subfolder for job in jobs})

        results: list[Outcome] = [None] * len(calls)
        failures: list[tuple[int, TaskExecutionError | JobExecutionError]] = []
        watched: dict[asyncio.Future[JobEnd], tuple[_Job, str]] = {}
        try:
            for job in jobs:
                if self._stopped:  # cancel() while submitting: submit nothing more
                    break
                self._write_job_files(job, calls, config, parallel)
                job_id = await self._sbatch(job)
                watched[self.poller.watch(job_id)] = (job, job_id)
                if self._stopped:  # cancel() ran during this sbatch, before the id was known
                    await self._scancel([job_id])
            pending = set(watched)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    job, job_id = watched[future]
                    self._active.discard(job_id)
                    await self._collect(job, job_id, future.result(), calls, results, failures)
                if failures and pending and not self._stopped:  # fail fast
                    ids = [watched[f][1] for f in pending if watched[f][1] not in self._cancelled]
                    await self._scancel(ids)
        finally:
            ids = [job_id for _, job_id in watched.values() if job_id in self._active]
            if ids:  # cancelled from outside: leave no job behind
                await asyncio.shield(self._scancel(ids))
        if self._stopped:
            raise JobStopped()
        if failures:
            failures.sort(key=lambda f: (not isinstance(f[1], TaskExecutionError), f[0]))
            raise failures[0][1]
        return results

    async def cancel(self) -> None:
        """Stop the job: scancel every SLURM job it runs; run_calls then raises JobStopped."""
        self._stopped = True
        await self._scancel(sorted(self._active))

    # --- internals ------------------------------------------------------------------------

    def _config(self, meta: Mapping[str, Any] | None, task_name: str) -> SlurmConfig:
        try:
            config = task_slurm_config(
                load_slurm_config_file(self.config_file), meta, task_name=task_name
            )
            return with_job_settings(
                config, slurm_account=self.slurm_account, worker_init=self.worker_init
            )
        except SlurmConfigError as e:
            raise JobExecutionError(f"SLURM configuration error: {e}") from None

    def _plan(self, calls: Sequence[TaskCall], tasks_per_job: int) -> list[_Job]:
        jobs = []
        for number, indices in enumerate(split_into_batches(len(calls), tasks_per_job)):
            first = calls[indices[0]].paths.log
            subfolder = str(first.parent.relative_to(self.local_dir))
            prefix = first.stem
            order = prefix.split("_", 1)[0]
            slurm_prefix = f"{order}_batch_{number:06d}" if "_par_" in prefix else prefix
            script = first.parent / f"{slurm_prefix}_slurm_submit.sbatch"
            jobs.append(_Job(indices, slurm_prefix, subfolder, script))
        return jobs

    def _user_path(self, local: Path) -> Path:
        return self.user_dir / local.relative_to(self.local_dir)

    def _write_job_files(
        self, job: _Job, calls: Sequence[TaskCall], config: SlurmConfig, parallel: int
    ) -> None:
        job_calls = []
        for index in job.indices:
            call = calls[index]
            user_call = replace(
                call,
                paths=CallPaths(
                    args_json=self._user_path(call.paths.args_json),
                    out_json=self._user_path(call.paths.out_json),
                    log=self._user_path(call.paths.log),
                    done=self._user_path(call.paths.done),
                ),
            )
            prefix = call.paths.log.stem
            in_file = call.paths.log.parent / f"{prefix}_in.pickle"
            write_input_file(in_file, user_call)
            out_file = self._user_path(call.paths.log.parent / f"{prefix}_out.pickle")
            job_calls.append(JobCall(prefix, str(in_file), str(out_file)))
        user_sub = self.user_dir / job.subfolder
        spec = SlurmJobSpec(
            config=config,
            calls=job_calls,
            parallel_tasks_per_job=parallel,
            working_dir=str(self.user_dir),
            stdout_file=str(user_sub / f"{job.slurm_prefix}_slurm_%j.out"),
            stderr_file=str(user_sub / f"{job.slurm_prefix}_slurm_%j.err"),
            worker_python=self.worker_python,
            export_dir=str(self.user_dir),
            worker_env=self.worker_env,
            comment=self.job_comment,
        )
        job.script.write_text(sbatch_script(spec), encoding="utf-8")
        job.script.chmod(0o644)

    async def _make_user_folders(self, subfolders: set[str]) -> None:
        folders = [str(self.user_dir / s) for s in sorted(subfolders)]
        result = await self._as_user(["mkdir", "-p", *folders])
        if result.returncode != 0:
            raise JobExecutionError(
                f"Cannot create the job folders as user {self.commands.sudo_user}: "
                f"{result.stderr.strip()[:2000]}"
            )

    async def _sbatch(self, job: _Job) -> str:
        try:
            job_id = await self.commands.sbatch(str(job.script))
        except SchedulerCallFailed as e:
            raise JobExecutionError(f"SLURM submission failed: {e}") from None
        self._active.add(job_id)
        self.submitted_job_ids.append(job_id)
        return job_id

    async def _scancel(self, job_ids: list[str]) -> None:
        self._cancelled.update(job_ids)
        try:
            await self.commands.scancel(job_ids)
        except SchedulerCallFailed as e:  # finished meanwhile, or scancel blinked: logged only
            logger.warning("scancel of %s: %s", ",".join(job_ids), e)

    async def _collect(
        self,
        job: _Job,
        job_id: str,
        end: JobEnd,
        calls: Sequence[TaskCall],
        results: list[Outcome],
        failures: list[tuple[int, TaskExecutionError | JobExecutionError]],
    ) -> None:
        """Copy the job's files back, then read each call's outcome."""
        local_sub = self.local_dir / job.subfolder
        names = [f"{job.slurm_prefix}_slurm_{job_id}.out", f"{job.slurm_prefix}_slurm_{job_id}.err"]
        for index in job.indices:
            paths = calls[index].paths
            prefix = paths.log.stem
            names += [paths.args_json.name, paths.log.name, paths.out_json.name]
            names.append(f"{prefix}_out.pickle")
        await self._copy_back(job.subfolder, names)
        stdout = _tail(local_sub / names[0])
        stderr = _tail(local_sub / names[1])
        for index in job.indices:
            paths = calls[index].paths
            out_file = local_sub / f"{paths.log.stem}_out.pickle"
            try:
                outcome = read_worker_file(out_file)
            except FileNotFoundError:
                if job_id in self._cancelled:
                    continue
                reason = describe_job_end(end, step_name=paths.log.stem, stderr_tail=stderr)
                message = (
                    f"{reason}\nSLURM stdout (tail):\n{stdout}\nSLURM stderr (tail):\n{stderr}"
                )
                failures.append((index, JobExecutionError(message)))
                continue
            except Exception as e:  # noqa: BLE001 - a truncated or foreign file
                failures.append((index, JobExecutionError(f"Unreadable outcome {out_file}: {e}")))
                continue
            status = outcome.get("status")
            if status == "done":
                output = outcome.get("output")
                try:  # durably, before it counts (taskproc.completions)
                    await asyncio.to_thread(record_completion, calls[index], output)
                except OSError as e:
                    failures.append(
                        (index, JobExecutionError(f"Cannot record a call's completion: {e}"))
                    )
                    continue
                results[index] = output
            elif status == "task_failed":
                failures.append((index, TaskExecutionError(outcome["message"], outcome["log"])))
            else:
                failures.append((index, JobExecutionError(outcome.get("message", str(outcome)))))

    async def _copy_back(self, subfolder: str, names: list[str]) -> None:
        """One ``tar`` as the user of the job's files in the user folder, unpacked locally."""
        result = await self._as_user(
            [
                "tar",
                "-cf",
                "-",
                "--ignore-failed-read",
                "-C",
                str(self.user_dir / subfolder),
                *names,
            ]
        )
        if result.returncode != 0:
            raise JobExecutionError(
                f"Cannot copy the job's files back from {self.user_dir / subfolder}: "
                f"{result.stderr.strip()[:2000]}"
            )
        with tarfile.open(fileobj=io.BytesIO(result.raw_stdout)) as archive:
            archive.extractall(self.local_dir / subfolder, filter="data")

    async def _as_user(self, argv: list[str]) -> CommandResult:
        try:
            return await self.commands.run(argv, as_user=True)
        except SchedulerCallFailed as e:
            raise JobExecutionError(str(e)) from None


def _limits(config: SlurmConfig) -> BatchingLimits:
    return BatchingLimits(
        target_cpus_per_job=config.target_cpus_per_job,
        max_cpus_per_job=config.max_cpus_per_job,
        target_mem_per_job=config.target_mem_per_job,
        max_mem_per_job=config.max_mem_per_job,
        target_num_jobs=config.target_num_jobs,
        max_num_jobs=config.max_num_jobs,
    )


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace")
