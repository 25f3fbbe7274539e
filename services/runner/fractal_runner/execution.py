"""Execution of one job with the reference's semantics (reference §5.2–§5.4, §5.9).

The job is read from its submission snapshot (``GetJobSpec``). For each task of the slice, in
order: the input images come from api already filtered (``StreamTaskInputs``), their types are
checked against the task's ``input_types``, the task is called by type with exactly the
reference's arguments, every output is validated and merged, and the result is handed to api
(``ApplyTaskResult``), which applies the image-list rules in its transaction. The job then ends
with ``FinishJob``: DONE with the content of ``workflow.log``, or FAILED with the reference's
error text. Results of the tasks that succeeded stay applied.

Resuming after a restart is the same run: tasks whose results api already applied
(``applied_task_orders``) are skipped, the job folder is reused, and within the interrupted
task only the calls without a completion record run (``taskproc.completions``).

A job ends FAILED only for its own fault (a task error, an invalid output, a permanent refusal
of its inputs or result by api) or a stop; an RPC error of api that is not such a refusal is
raised, for the scheduler to run the attempt again (``fractal_runner.attempts``).

Stop: the scheduler cancels the executor (its processes are killed, the job ends FAILED with the
reference's stop text). As a safety net for a stop that did not reach this runner, the job's
``stop_requested`` is read again before every task but the first one this attempt runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal.v2 import image_pb2, job_pb2, task_pb2
from fractal_grpc.convert import python_to_value, struct_dict
from fractal_grpc.images.filters import match_filter
from fractal_grpc.images.task_output import (
    MAX_PARALLELIZATION_LIST_SIZE,
    TaskOutput,
    TaskOutputValidationError,
    deduplicate,
    merge_outputs,
    parse_init_task_output,
    parse_task_output,
)
from fractal_runner.api_client import JobExecutionClient
from fractal_runner.progress import DEFAULT_INTERVAL, TaskProgress
from fractal_runner.taskproc import (
    CallPaths,
    JobExecutionError,
    JobStopped,
    LocalBackendConfigError,
    TaskCall,
    TaskExecutionError,
    create_job_folders,
    get_local_config,
    parallel_prefix,
    single_prefix,
    task_subfolder,
)
from fractal_runner.taskproc.executor import Executor

__all__ = [
    "STOP_INFO",
    "JobExecution",
    "job_error_log",
    "stop_log",
    "task_error_log",
    "unknown_error_log",
]

log = logging.getLogger("fractal.runner")

SUBMITTED = job_pb2.JOB_STATUS_SUBMITTED
DONE = job_pb2.JOB_STATUS_DONE
FAILED = job_pb2.JOB_STATUS_FAILED

WORKFLOW_LOG = "workflow.log"
HISTORY_FILE = "history.json"
STOP_INFO = JobStopped().message
_LOG_FORMAT = "%(asctime)s; %(levelname)s; %(message)s"


# --- the reference's job log texts (§5.2) ------------------------------------------------


def task_error_log(task_name: str, order: int, task_log: str) -> str:
    return (
        f"TASK ERROR: Task name: {task_name}, position in Workflow: {order}\nTRACEBACK:\n{task_log}"
    )


def job_error_log(job_id: int, info: str) -> str:
    return f"JOB ERROR in Fractal job {job_id}:\nTRACEBACK:\n{info}"


def unknown_error_log(job_id: int, trace: str) -> str:
    return f"UNKNOWN ERROR in Fractal job {job_id}\nTRACEBACK:\n{trace}"


def stop_log(job_id: int) -> str:
    return job_error_log(job_id, STOP_INFO)


# --- conversions ------------------------------------------------------------------------


def output_to_proto(output: TaskOutput) -> pb.TaskOutput:
    """The validated output as the ``TaskOutput`` message (a None attribute: null = unset)."""
    message = pb.TaskOutput(image_list_removals=output.image_list_removals)
    for image in output.image_list_updates:
        update = message.image_list_updates.add(zarr_url=image.zarr_url)
        if image.origin is not None:
            update.origin = image.origin
        for key, value in image.attributes.items():
            python_to_value(value, update.attributes[key])
        update.types.update(image.types)
    for key, filter_value in output.filters.attributes.items():
        python_to_value(filter_value, message.filters.attributes[key])
    message.filters.types.update(output.filters.types)
    return message


def history_item(task: pb.TaskSpec) -> dict[str, Any]:
    return {
        "workflowtask": {"id": task.workflow_task_id, "order": task.order, "task_id": task.task_id},
        "status": "done",
        "parallelization": {},
    }


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


# --- the job folder and its log -----------------------------------------------------------


def prepare_job_folder(job_dir: Path, tasks: Sequence[pb.TaskSpec]) -> None:
    """Create the job folder and the ``{order}_{slug}`` subfolders of the slice (0755).

    When resuming, the folder already exists: the missing subfolders are added.
    """
    create_job_folders(job_dir, [(task.order, task.task_name) for task in tasks], resume=True)


def _open_job_logger(spec: pb.JobSpec, job_dir: Path) -> tuple[logging.Logger, logging.Handler]:
    # A logger outside the logging hierarchy: nothing is kept after the job, and its DEBUG
    # lines go to workflow.log only.
    logger = logging.Logger(f"WF{spec.workflow_id}_job{spec.job_id}", level=logging.DEBUG)
    handler = logging.FileHandler(job_dir / WORKFLOW_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger.addHandler(handler)
    return logger, handler


# --- execution ----------------------------------------------------------------------------


class JobExecution:
    """Runs one job to its end; one instance per execution attempt."""

    def __init__(
        self,
        job_id: int,
        api: JobExecutionClient,
        executor: Executor,
        *,
        backend: str = "local",
        local_config_file: Path | None = None,
        progress_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.job_id = job_id
        self.api = api
        self.executor = executor
        self.backend = backend
        self.local_config_file = local_config_file
        self.progress_interval = progress_interval

    async def run(self) -> None:
        """Execute the job and report its end to api.

        Returns once api has the final state, or when there is nothing to do (the job is no
        longer SUBMITTED). Raises an RPC error of api that is not the job's fault (one that
        outlasted the client's retries, INTERNAL, NOT_FOUND, ...: the scheduler decides, see
        ``fractal_runner.attempts``; the job is not ended) and on cancellation (the runner is
        stopping: the job is left as it is, to be resumed).
        """
        job_id = self.job_id
        try:
            spec = await self.api.get_job_spec(job_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                log.warning("job %s: not found in api; nothing to run", job_id)
                return
            raise
        if spec.status != SUBMITTED:
            log.info(
                "job %s: status %s, nothing to run", job_id, job_pb2.JobStatus.Name(spec.status)
            )
            return
        if spec.stop_requested or self.executor.stopped:
            await self.api.finish_job(job_id, FAILED, stop_log(job_id))
            return

        job_dir = Path(spec.working_dir)
        try:
            if not job_dir.is_absolute():
                raise ValueError(f"the job's working_dir {spec.working_dir!r} is not absolute")
            await asyncio.to_thread(prepare_job_folder, job_dir, spec.tasks)
            logger, handler = _open_job_logger(spec, job_dir)
        except (OSError, ValueError) as exc:
            message = (
                "An error occurred while creating job folder and subfolders.\n"
                f"Original error: {exc}"
            )
            await self.api.finish_job(job_id, FAILED, message)
            return

        try:
            await self._execute(spec, job_dir, logger)
        finally:
            logger.removeHandler(handler)
            handler.close()

    async def _execute(self, spec: pb.JobSpec, job_dir: Path, logger: logging.Logger) -> None:
        job_id = self.job_id
        applied = set(spec.applied_task_orders)
        logger.info("Start execution of workflow %s; job %s", spec.workflow_id, job_id)
        logger.debug("fractal-runner backend: %s", self.backend)
        logger.debug("working_dir: %s", spec.working_dir)
        logger.debug("working_dir_user: %s", spec.working_dir_user)
        logger.debug("zarr_dir: %s", spec.zarr_dir)
        logger.debug("first_task_index: %s", spec.first_task_index)
        logger.debug("last_task_index: %s", spec.last_task_index)
        if applied:
            logger.info("Resuming: tasks %s were already applied", sorted(applied))
        logger.info("****************************************")

        history = [history_item(task) for task in spec.tasks if task.order in applied]
        current: pb.TaskSpec | None = None
        progress: TaskProgress | None = None
        failure: tuple[str, int | None] | None = None
        ran_one = False
        try:
            self.executor.bind_job(spec)
            for task in spec.tasks:
                if task.order in applied:
                    logger.info(
                        "SKIP %s-th task (name=%s): already applied", task.order, task.task_name
                    )
                    continue
                current = task
                if self.executor.stopped or (ran_one and await self._stop_requested()):
                    raise JobStopped()
                ran_one = True
                logger.info("SUBMIT %s-th task (name=%s)", task.order, task.task_name)
                progress = self._progress(task)
                await progress.send()  # the task is running (and the job started)
                output = await self._run_task(spec, task, job_dir, logger, progress)
                await self._apply(task, output, progress.counts())
                history.append(history_item(task))
                await asyncio.to_thread(_write_json_atomic, job_dir / HISTORY_FILE, history)
                logger.info("END %s-th task (name=%s)", task.order, task.task_name)
            current = None
            progress = None
        except asyncio.CancelledError:
            logger.warning("Runner shutting down: job interrupted, to be resumed")
            raise
        except TaskExecutionError as exc:
            assert current is not None
            failure = (task_error_log(current.task_name, current.order, exc.log), current.order)
        except JobExecutionError as exc:
            failure = (job_error_log(job_id, exc.message), _order(current))
        except TaskOutputValidationError as exc:  # outputs invalid together (merge_outputs)
            failure = (job_error_log(job_id, str(exc)), _order(current))
        except grpc.aio.AioRpcError:
            # api (or the way to it) failed, not the job: the attempt is run again.
            logger.warning("Interrupted by an error of api: the job is to be resumed")
            raise
        except Exception:  # noqa: BLE001 - reported to the user as an unknown error
            failure = (unknown_error_log(job_id, traceback.format_exc()), _order(current))

        if failure is not None:
            text, failed_order = failure
            logger.error("%s", text)
            log.info("job %s: failed (task order %s)", job_id, failed_order)
            calls = progress.counts() if progress is not None and failed_order is not None else None
            await self.api.finish_job(job_id, FAILED, text, failed_order, calls)
            return
        logger.info("End execution of workflow %s; job %s", spec.workflow_id, job_id)
        for handler in logger.handlers:
            handler.flush()
        workflow_log = await asyncio.to_thread(_read_text, job_dir / WORKFLOW_LOG)
        await self.api.finish_job(job_id, DONE, workflow_log)
        log.info("job %s: done", job_id)

    def _progress(self, task: pb.TaskSpec) -> TaskProgress:
        job_id, order = self.job_id, task.order

        async def report(calls: pb.CallCounts) -> None:
            await self.api.report_task_progress(job_id, order, calls)

        return TaskProgress(report, interval=self.progress_interval)

    async def _stop_requested(self) -> bool:
        """Whether the job was stopped meanwhile: the safety net for a stop broadcast this
        runner missed (the spec was read at the start; this is read between tasks only)."""
        spec = await self.api.get_job_spec(self.job_id)
        return spec.stop_requested or spec.status != SUBMITTED

    async def _run_task(
        self,
        spec: pb.JobSpec,
        task: pb.TaskSpec,
        job_dir: Path,
        logger: logging.Logger,
        progress: TaskProgress,
    ) -> TaskOutput:
        try:
            images = await self.api.stream_task_inputs(self.job_id, task.order)
        except grpc.aio.AioRpcError as exc:
            raise _refusal(exc) from None
        logger.debug("%s-th task: %s input images", task.order, len(images))
        _check_input_types(images, task.input_types)
        zarr_urls = [image.zarr_url for image in images]
        subfolder = task_subfolder(task.order, task.task_name)

        def call(command: str, prefix: str, args: dict[str, Any]) -> TaskCall:
            return TaskCall(command, args, CallPaths.build(job_dir, subfolder, prefix))

        task_type = task.task_type
        if task_type == task_pb2.TASK_TYPE_NON_PARALLEL:
            command = _command(task, "non_parallel")
            args = {
                **struct_dict(task.args_non_parallel),
                "zarr_urls": zarr_urls,
                "zarr_dir": spec.zarr_dir,
            }
            (outcome,) = await self._run_calls(
                [call(command, single_prefix(task.order), args)],
                task,
                task.meta_non_parallel,
                progress,
            )
            return _parse_output(outcome)

        if task_type == task_pb2.TASK_TYPE_PARALLEL:
            _check_parallelization_size(len(zarr_urls))
            if not zarr_urls:
                return TaskOutput()
            command = _command(task, "parallel")
            base = struct_dict(task.args_parallel)
            calls = [
                call(command, parallel_prefix(task.order, i), {**base, "zarr_url": url})
                for i, url in enumerate(zarr_urls)
            ]
            outcomes = await self._run_calls(calls, task, task.meta_parallel, progress)
            return merge_outputs([_parse_output(outcome) for outcome in outcomes])

        if task_type == task_pb2.TASK_TYPE_COMPOUND:
            init_command = _command(task, "non_parallel")
            compute_command = _command(task, "parallel")
            init_args = {
                **struct_dict(task.args_non_parallel),
                "zarr_urls": zarr_urls,
                "zarr_dir": spec.zarr_dir,
            }
            (init_outcome,) = await self._run_calls(
                [call(init_command, single_prefix(task.order), init_args)],
                task,
                task.meta_non_parallel,
                progress,
            )
            try:
                init_output = parse_init_task_output(init_outcome)
            except TaskOutputValidationError as exc:
                raise JobExecutionError(str(exc)) from None
            items = deduplicate(init_output.parallelization_list)
            _check_parallelization_size(len(items))
            logger.debug("%s-th task: %s parallelization items", task.order, len(items))
            if not items:
                return TaskOutput()
            base = struct_dict(task.args_parallel)
            calls = [
                call(
                    compute_command,
                    parallel_prefix(task.order, i),
                    {**base, "zarr_url": item.zarr_url, "init_args": item.init_args},
                )
                for i, item in enumerate(items)
            ]
            outcomes = await self._run_calls(calls, task, task.meta_parallel, progress)
            return merge_outputs([_parse_output(outcome) for outcome in outcomes])

        raise JobExecutionError(
            f"Task {task.task_name!r} has an unsupported type {task_pb2.TaskType.Name(task_type)}."
        )

    async def _run_calls(
        self,
        calls: Sequence[TaskCall],
        task: pb.TaskSpec,
        meta: struct_pb2.Struct,
        progress: TaskProgress,
    ) -> list[dict[str, Any] | None]:
        """Run the calls of one task part with its meta (the local backend's config is read
        here; a SLURM executor merges meta into its own config)."""
        meta_dict = struct_dict(meta)
        concurrency = None
        if self.backend == "local":
            try:
                config = get_local_config(meta_dict, self.local_config_file)
            except LocalBackendConfigError as exc:
                raise JobExecutionError(str(exc)) from None
            concurrency = config.parallel_tasks_per_job
        async with progress.part(calls, more_total=len(calls)):
            return await self.executor.run_calls(
                calls, concurrency=concurrency, meta=meta_dict, task_name=task.task_name
            )

    async def _apply(self, task: pb.TaskSpec, output: TaskOutput, calls: pb.CallCounts) -> None:
        try:
            await self.api.apply_task_result(
                self.job_id, task.order, output_to_proto(output), calls
            )
        except grpc.aio.AioRpcError as exc:
            raise _refusal(exc) from None


#: api's answers that refuse the job's own request for good (its result breaks an image-list
#: rule, its dataset was deleted, ...): the job ends FAILED with api's message.
_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


def _refusal(exc: grpc.aio.AioRpcError) -> Exception:
    """A permanent refusal as the job's error; any other RPC error as it is."""
    if exc.code() in _REFUSALS:
        return JobExecutionError(exc.details() or exc.code().name)
    return exc


def _order(task: pb.TaskSpec | None) -> int | None:
    return None if task is None else task.order


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _command(task: pb.TaskSpec, part: str) -> str:
    if part == "parallel":
        command = task.command_parallel if task.HasField("command_parallel") else ""
    else:
        command = task.command_non_parallel if task.HasField("command_non_parallel") else ""
    if not command:
        raise JobExecutionError(f"Task {task.task_name!r} has no command_{part}.")
    return command


def _check_input_types(images: Sequence[image_pb2.Image], input_types: Mapping[str, bool]) -> None:
    """Every filtered image must match the task's input_types (a missing type is false)."""
    if not input_types:
        return
    wanted = dict(input_types)
    for image in images:
        types = dict(image.types)
        if not match_filter({}, types, {}, wanted):
            raise JobExecutionError(
                "Invalid filtered image list\n"
                f"Task input types: {wanted}\n"
                f"Image zarr_url: {image.zarr_url}\n"
                f"Image types: {types}\n"
            )


def _check_parallelization_size(size: int) -> None:
    if size > MAX_PARALLELIZATION_LIST_SIZE:
        raise JobExecutionError(
            "Too many parallelization items.\n"
            f"Number of items: {size}\n"
            f"Maximum allowed: {MAX_PARALLELIZATION_LIST_SIZE}\n"
        )


def _parse_output(outcome: dict[str, Any] | None) -> TaskOutput:
    try:
        return parse_task_output(outcome)
    except TaskOutputValidationError as exc:
        raise JobExecutionError(str(exc)) from None
