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

from fractal_runner.models import SlurmJobState
from fractal_runner.slurm.batching import BatchingLimits, batching_heuristics, split_into_batches
from fractal_runner.slurm.config_file import load_slurm_config_file
from fractal_runner.slurm.errors import SlurmConfigError, SlurmHeuristicsError
from fractal_runner.slurm.job_end import UNKNOWN, JobEnd, describe_job_end
from fractal_runner.slurm.job_records import SlurmJobRecord, SlurmJobRecords
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import (
    CommandResult,
    SbatchRefused,
    SchedulerCallFailed,
    SlurmCommands,
)
from fractal_runner.slurm.script import JobCall, SlurmJobSpec, sbatch_script, wrapper_script
from fractal_runner.slurm.tag_lookup import find_jobs_by_tag
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
    """One SLURM job of a run_calls: which calls it runs, where its files are, and its record
    in the runner's schema (None when the executor keeps no records)."""

    indices: tuple[int, ...]
    slurm_prefix: str
    subfolder: str
    script: Path
    record: SlurmJobRecord | None = None


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
        records: SlurmJobRecords | None = None,
        fractal_job_id: int | None = None,
        files_shared: bool = True,
        runs_pre_submission_commands: bool = False,
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
        #: The runner's record of its SLURM jobs (restart reconciliation); None: not kept.
        self.records = records if fractal_job_id is not None else None
        self.fractal_job_id = fractal_job_id
        #: True: the job reads its input files and script in the runner's folder (slurm_sudo,
        #: one machine or a shared disk); False: they go over in one archive per batch
        #: (``commands.put_archive``, slurm_ssh).
        self.files_shared = files_shared
        #: True (slurm_ssh): the config's ``pre_submission_commands`` run before each sbatch, in
        #: a wrapper script; False (slurm_sudo, as in the reference): they are ignored, with a
        #: warning.
        self.runs_pre_submission_commands = runs_pre_submission_commands
        self._stopped = False
        self._active: set[str] = set()
        self._cancelled: set[str] = set()  # by us: their calls without outcome are not failures
        self._warned: set[tuple[str, ...]] = set()  # pre_submission_commands warned about
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
        attached, remaining, numbers = await self._reattach(calls)
        tasks_per_job, parallel = self._batching(config, len(remaining) or len(calls))
        jobs = self._plan(calls, remaining, tasks_per_job, numbers)
        # Found-again jobs too: a job SLURM lost may never have made its folder.
        await self._make_user_folders({job.subfolder for job in jobs + [a[0] for a in attached]})

        results: list[Outcome] = [None] * len(calls)
        failures: list[tuple[int, TaskExecutionError | JobExecutionError]] = []
        watched: dict[asyncio.Future[JobEnd], tuple[_Job, str]] = {}
        try:
            for job, job_id, end in attached:
                watched[self._watch(job_id, end)] = (job, job_id)
            prepared = []
            for job in jobs:
                if self._stopped:
                    break
                prepared.append(await self._prepare(job, calls, config, parallel))
            await self._upload(prepared)  # one archive for all the jobs (slurm_ssh)
            for job, _ in prepared:
                if self._stopped:  # cancel() while submitting: submit nothing more
                    break
                job, job_id = await self._sbatch_job(job, config)
                watched[self.poller.watch(job_id)] = (job, job_id)
                if self._stopped:  # cancel() ran during this sbatch, before the id was known
                    await self._scancel([job_id])
            pending = set(watched)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    job, job_id = watched[future]
                    self._active.discard(job_id)
                    end = future.result()
                    if self._lost_once(job, end):  # unknown to SLURM: resubmitted once
                        again = await self._resubmit(job, job_id, calls, config, parallel, numbers)
                        future = self.poller.watch(again[1])
                        watched[future] = again
                        pending.add(future)
                        continue
                    if job.record is not None:
                        await self.records_ended(job.record.id, end.state)
                    await self._collect(job, job_id, end, calls, results, failures)
                if failures and pending and not self._stopped:  # fail fast
                    ids = [watched[f][1] for f in pending if watched[f][1] not in self._cancelled]
                    await self._scancel(ids)
        finally:
            ids = [job_id for _, job_id in watched.values() if job_id in self._active]
            if ids and self.records is None:  # cancelled from outside: leave no job behind
                await asyncio.shield(self._scancel(ids))
            # With records, the jobs stay: the run's next attempt (here, or on another
            # replica after a restart) finds them again.
        if self._stopped:
            raise JobStopped()
        if failures:
            failures.sort(key=lambda f: (not isinstance(f[1], TaskExecutionError), f[0]))
            raise failures[0][1]
        return results

    def _batching(self, config: SlurmConfig, n_calls: int) -> tuple[int, int]:
        try:
            return batching_heuristics(
                tot_tasks=n_calls,
                tasks_per_job=config.tasks_per_job,
                parallel_tasks_per_job=config.parallel_tasks_per_job,
                cpus_per_task=config.cpus_per_task,
                mem_per_task=config.mem_per_task_mb,
                limits=_limits(config),
            )
        except SlurmHeuristicsError as e:
            raise JobExecutionError(f"SLURM batching failed: {e}") from None

    def _watch(self, job_id: str, end: JobEnd | None) -> asyncio.Future[JobEnd]:
        """The future of a found-again job: resolved at once when its end is recorded."""
        if end is None:
            self._active.add(job_id)
            return self.poller.watch(job_id)
        future: asyncio.Future[JobEnd] = asyncio.get_running_loop().create_future()
        future.set_result(end)
        return future

    def _lost_once(self, job: _Job, end: JobEnd) -> bool:
        return (
            end.state == UNKNOWN
            and job.record is not None
            and job.record.generation == 0
            and not self._stopped
        )

    async def records_ended(self, record_id: int, state: str) -> None:
        assert self.records is not None
        try:
            await self.records.ended(record_id, state)
        except Exception:  # noqa: BLE001 - only saves SLURM calls after a restart
            logger.warning("could not record the end of SLURM job record %s", record_id)

    async def _reattach(
        self, calls: Sequence[TaskCall]
    ) -> tuple[list[tuple[_Job, str, JobEnd | None]], list[int], dict[str, int]]:
        """The recorded SLURM jobs of these calls (a restart, or a redelivered command):
        ``(job, slurm id, recorded end or None)``; the indices of the calls none covers; and
        per subfolder the number of SLURM jobs recorded so far (new prefixes count on)."""
        by_folder: dict[str, dict[str, int]] = {}
        for index, call in enumerate(calls):
            subfolder = str(call.paths.log.parent.relative_to(self.local_dir))
            by_folder.setdefault(subfolder, {})[call.paths.log.stem] = index
        numbers = {subfolder: 0 for subfolder in by_folder}
        if self.records is None or self.fractal_job_id is None:
            return [], list(range(len(calls))), numbers
        records: list[SlurmJobRecord] = []
        for subfolder in by_folder:
            # The runner's database failing is raised as is (the scheduler tries the attempt
            # again), never taken as "no record".
            found = await self.records.for_task(self.fractal_job_id, subfolder)
            numbers[subfolder] = await self.records.count(self.fractal_job_id, subfolder)
            records += found
        records = await self._find_submitting(records)
        covered: set[int] = set()
        attached: list[tuple[_Job, str, JobEnd | None]] = []
        for record in sorted(records, key=lambda r: r.id, reverse=True):  # newest wins
            stems = by_folder.get(record.subfolder, {})
            indices = tuple(
                sorted(stems[s] for s in record.calls if s in stems and stems[s] not in covered)
            )
            if not indices or record.slurm_job_id is None:
                continue
            covered.update(indices)
            script = (
                self.local_dir / record.subfolder / f"{record.slurm_prefix}_slurm_submit.sbatch"
            )
            job = _Job(indices, record.slurm_prefix, record.subfolder, script, record)
            end = None
            if record.state == SlurmJobState.ENDED and record.slurm_state is not None:
                end = JobEnd(record.slurm_job_id, record.slurm_state)
            attached.append((job, record.slurm_job_id, end))
        if attached:
            logger.info(
                "%d SLURM job(s) of job %s found again: watched, not submitted again",
                len(attached),
                self.fractal_job_id,
            )
        remaining = [index for index in range(len(calls)) if index not in covered]
        return attached, remaining, numbers

    async def _find_submitting(self, records: list[SlurmJobRecord]) -> list[SlurmJobRecord]:
        """Records without a SLURM id (the runner died around their sbatch): looked up by tag;
        found ones get their id, the others are abandoned (their calls go into new jobs)."""
        submitting = [r for r in records if r.slurm_job_id is None]
        if not submitting:
            return records
        try:
            found = await find_jobs_by_tag(
                self.commands,
                [r.tag for r in submitting],
                since_epoch=min(r.created_epoch for r in submitting),
            )
        except SchedulerCallFailed as e:
            raise JobExecutionError(
                f"Cannot tell whether SLURM jobs of this run were submitted before a restart: {e}"
            ) from None
        assert self.records is not None
        kept = [r for r in records if r.slurm_job_id is not None]
        for record in submitting:
            slurm_id = found.get(record.tag)
            if slurm_id is None:
                await self.records.abandoned(record.id)
                continue
            await self.records.submitted(record.id, slurm_id)
            kept.append(replace(record, slurm_job_id=slurm_id, state=SlurmJobState.SUBMITTED))
        return kept

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

    def _plan(
        self,
        calls: Sequence[TaskCall],
        indices: Sequence[int],
        tasks_per_job: int,
        numbers: dict[str, int],
    ) -> list[_Job]:
        jobs = []
        for batch in split_into_batches(len(indices), tasks_per_job):
            chosen = tuple(indices[i] for i in batch)
            jobs.append(self._job(calls, chosen, numbers))
        return jobs

    def _job(
        self, calls: Sequence[TaskCall], indices: tuple[int, ...], numbers: dict[str, int]
    ) -> _Job:
        """A new SLURM job for ``calls[indices]``; batch prefixes count on per subfolder."""
        first = calls[indices[0]].paths.log
        subfolder = str(first.parent.relative_to(self.local_dir))
        number = numbers.get(subfolder, 0)
        numbers[subfolder] = number + 1
        prefix = first.stem
        order = prefix.split("_", 1)[0]
        slurm_prefix = f"{order}_batch_{number:06d}" if "_par_" in prefix else prefix
        script = first.parent / f"{slurm_prefix}_slurm_submit.sbatch"
        return _Job(indices, slurm_prefix, subfolder, script)

    async def _prepare(
        self,
        job: _Job,
        calls: Sequence[TaskCall],
        config: SlurmConfig,
        parallel: int,
        generation: int = 0,
    ) -> tuple[_Job, list[Path]]:
        """Record the job (when records are kept) and write its files; the files written."""
        comment = self.job_comment
        if self.records is not None and self.fractal_job_id is not None:
            record = await self.records.intend(
                job_id=self.fractal_job_id,
                subfolder=job.subfolder,
                slurm_prefix=job.slurm_prefix,
                calls=[calls[i].paths.log.stem for i in job.indices],
                slurm_user=self.commands.user,
                generation=generation,
            )
            job = replace(job, record=record)
            comment = record.tag
        try:
            # In a thread: a job of thousands of calls writes (and fsyncs) as many input
            # files, which on the event loop held every run's poller for seconds.
            files = await asyncio.to_thread(
                self._write_job_files, job, calls, config, parallel, comment
            )
        except (SlurmConfigError, ValueError) as e:  # what the script cannot say (a path…)
            if self.records is not None and job.record is not None:
                await self.records.abandoned(job.record.id)
            raise JobExecutionError(f"SLURM configuration error: {e}") from None
        return job, files

    async def _upload(self, prepared: Sequence[tuple[_Job, list[Path]]]) -> None:
        """Without a shared filesystem: every job file over in one archive."""
        if self.files_shared or not prepared:
            return
        put_archive = getattr(self.commands, "put_archive", None)
        if put_archive is None:
            raise JobExecutionError("The job files cannot reach the cluster (no upload).")
        files = [path for _, paths in prepared for path in paths]
        archive = await asyncio.to_thread(_archive, self.local_dir, files)
        try:
            await put_archive(archive, str(self.user_dir))
        except SchedulerCallFailed as e:
            raise JobExecutionError(f"Cannot send the job files to the cluster: {e}") from None

    async def _sbatch_job(self, job: _Job, config: SlurmConfig) -> tuple[_Job, str]:
        """sbatch one prepared job; its id is recorded at once."""
        records = self.records
        script = job.script if self.files_shared else self._user_path(job.script)
        wrapper = None
        if self._wrapped(config):
            local = _wrapper_path(job.script)
            wrapper = str(local if self.files_shared else self._user_path(local))
        try:
            job_id = await self.commands.sbatch(str(script), wrapper)
        except SchedulerCallFailed as e:
            # Refused: nothing runs under this record. Any other failure (a timeout, a dropped
            # connection) leaves it "submitting": the job may exist, and is looked up by its tag.
            if records is not None and job.record is not None and isinstance(e, SbatchRefused):
                await records.abandoned(job.record.id)
            raise JobExecutionError(f"SLURM submission failed: {e}") from None
        self._active.add(job_id)
        self.submitted_job_ids.append(job_id)
        if records is not None and job.record is not None:
            await records.submitted(job.record.id, job_id)
            job = replace(job, record=replace(job.record, slurm_job_id=job_id))
        return job, job_id

    async def _resubmit(
        self,
        job: _Job,
        job_id: str,
        calls: Sequence[TaskCall],
        config: SlurmConfig,
        parallel: int,
        numbers: dict[str, int],
    ) -> tuple[_Job, str]:
        """Submit the calls of a job SLURM lost (unknown to squeue and sacct) once more."""
        assert job.record is not None
        logger.warning(
            "SLURM job %s is unknown to squeue and sacct: its %d call(s) are submitted once more",
            job_id,
            len(job.indices),
        )
        fresh = self._job(calls, job.indices, numbers)
        await self._make_user_folders({fresh.subfolder})
        prepared = await self._prepare(fresh, calls, config, parallel, generation=1)
        await self._upload([prepared])
        again = await self._sbatch_job(prepared[0], config)
        assert self.records is not None
        await self.records.abandoned(job.record.id)
        return again

    def _user_path(self, local: Path) -> Path:
        return self.user_dir / local.relative_to(self.local_dir)

    def _write_job_files(
        self,
        job: _Job,
        calls: Sequence[TaskCall],
        config: SlurmConfig,
        parallel: int,
        comment: str | None,
    ) -> list[Path]:
        """Write the job's input files and script in the runner's folder; the files written.
        The script names the files as the job sees them."""
        job_calls = []
        written = []
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
            written.append(in_file)
            out_file = self._user_path(call.paths.log.parent / f"{prefix}_out.pickle")
            seen = in_file if self.files_shared else self._user_path(in_file)
            job_calls.append(JobCall(prefix, str(seen), str(out_file)))
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
            comment=comment,
        )
        job.script.write_text(sbatch_script(spec), encoding="utf-8")
        job.script.chmod(0o644)
        written.append(job.script)
        if self._wrapped(config):
            seen = job.script if self.files_shared else self._user_path(job.script)
            wrapper = _wrapper_path(job.script)
            wrapper.write_text(
                wrapper_script(config.pre_submission_commands, str(seen)), encoding="utf-8"
            )
            wrapper.chmod(0o644)
            written.append(wrapper)
        return written

    def _wrapped(self, config: SlurmConfig) -> bool:
        """Whether this job's sbatch goes through a wrapper running the pre-submission
        commands (warns once per list of commands when the backend ignores them)."""
        if not config.pre_submission_commands:
            return False
        if not self.runs_pre_submission_commands:
            if config.pre_submission_commands not in self._warned:
                self._warned.add(config.pre_submission_commands)
                logger.warning(
                    "pre_submission_commands of the SLURM config are ignored on slurm_sudo "
                    "(as in the reference): %s",
                    list(config.pre_submission_commands),
                )
            return False
        return True

    async def _make_user_folders(self, subfolders: set[str]) -> None:
        folders = [str(self.user_dir / s) for s in sorted(subfolders)]
        result = await self._as_user(["mkdir", "-p", *folders])
        if result.returncode != 0:
            raise JobExecutionError(
                f"Cannot create the job folders as user {self.commands.sudo_user}: "
                f"{result.stderr.strip()[:2000]}"
            )

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
                if end.state == UNKNOWN and job.record is not None:
                    reason += " Its task calls were already submitted a second time."
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


def _archive(base: Path, files: Sequence[Path]) -> bytes:
    """An uncompressed tar of ``files``, named relative to ``base`` (pickles compress poorly)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in files:
            archive.add(path, arcname=str(path.relative_to(base)), recursive=False)
    return buffer.getvalue()


def _wrapper_path(script: Path) -> Path:
    """``{script}_wrapper.sh`` next to the sbatch script (the reference's name)."""
    return script.with_name(f"{script.name}_wrapper.sh")


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace")
