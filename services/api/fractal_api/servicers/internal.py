"""JobExecutionService: what the runner reads and reports while executing a job (DESIGN §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import islice
from typing import Any

import grpc.aio

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal.internal.v1 import job_execution_service_pb2_grpc as rpc
from fractal.v2 import job_pb2
from fractal_api.context import ApiContext
from fractal_api.models import Dataset, Job, JobTaskResult, User
from fractal_api.store import images, jobs
from fractal_api.store.facets import FacetEdit
from fractal_api.views import JOB_STATUSES, TASK_TYPES, job_view
from fractal_grpc.convert import (
    attributes_to_python,
    dict_to_struct,
    fill_filters,
    fill_image,
    filters_to_dict,
)
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import FailedPrecondition, InvalidArgument, NotFound
from fractal_grpc.images.bitmaps import plan_filters
from fractal_grpc.images.changes import ImageRuleError, plan_image_changes, update_dataset_filters
from fractal_grpc.images.filters import Filters, merge_filters
from fractal_grpc.images.task_output import (
    TaskOutput,
    TaskOutputValidationError,
    check_unique_urls,
    parse_task_output,
)
from fractal_grpc.jobs.progress import CallCounts


def _snapshot(job: Job, order: int) -> dict[str, Any]:
    for item in job.tasks_snapshot:
        if item["order"] == order:
            return item
    raise InvalidArgument(
        f"task_order {order} is not in the slice of job {job.id}",
        violations=[("task_order", "not part of the job's slice")],
    )


def _pre_filters(dataset: Dataset, snapshot: dict[str, Any]) -> dict[str, Any]:
    merged = merge_filters(
        Filters.from_dict(dataset.filters), Filters.from_dict(snapshot["input_filters"])
    )
    return merged.to_dict()


def _output_from_proto(msg: pb.TaskOutput) -> TaskOutput:
    data = {
        "image_list_updates": [
            {
                "zarr_url": u.zarr_url,
                **({"origin": u.origin} if u.HasField("origin") else {}),
                "attributes": attributes_to_python(u.attributes),
                "types": dict(u.types),
            }
            for u in msg.image_list_updates
        ],
        "image_list_removals": list(msg.image_list_removals),
        "filters": filters_to_dict(msg.filters),
    }
    try:
        output = parse_task_output(data)
        check_unique_urls(output)
    except (TaskOutputValidationError, ValueError) as exc:
        raise InvalidArgument(str(exc), violations=[("output", str(exc)[:500])]) from None
    return output


def _counts(msg: pb.CallCounts) -> CallCounts:
    return CallCounts(done=msg.done, failed=msg.failed, total=msg.total)


class JobExecutionServicer(rpc.JobExecutionServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def _job(self, session: Any, job_id: int) -> Job:
        job = await session.get(Job, job_id)
        if job is None:
            raise NotFound(f"Job {job_id} not found", metadata={"job_id": str(job_id)})
        return job

    async def GetJobSpec(
        self, request: pb.GetJobSpecRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            job = await self._job(session, request.job_id)
            applied = await jobs.applied_orders(session, job.id)
            user = await session.get(User, job.user_id) if job.user_id else None
        spec = pb.JobSpec(
            job_id=job.id,
            project_id=job.project_id or 0,
            workflow_id=job.workflow_id or 0,
            dataset_id=job.dataset_id or 0,
            zarr_dir=job.dataset_dump["zarr_dir"],
            working_dir=job.working_dir or "",
            working_dir_user=job.working_dir_user or "",
            first_task_index=job.first_task_index,
            last_task_index=job.last_task_index,
            status=JOB_STATUSES[job.status],
            applied_task_orders=applied,
            stop_requested=job.stop_requested,
        )
        for name in ("slurm_account", "worker_init"):
            value = getattr(job, name)
            if value is not None:
                setattr(spec, name, value)
        if user is not None:
            if user.slurm_user:
                spec.slurm_user = user.slurm_user
            if user.cache_dir:
                spec.user_cache_dir = user.cache_dir
        for item in job.tasks_snapshot:
            task = spec.tasks.add(
                order=item["order"],
                workflow_task_id=item["workflow_task_id"],
                task_id=item["task_id"],
                task_name=item["task_name"],
                task_type=TASK_TYPES[item["task_type"]],
                input_types=item["input_types"],
                output_types=item["output_types"],
            )
            for name in ("command_non_parallel", "command_parallel"):
                if item[name] is not None:
                    setattr(task, name, item[name])
            for name in (
                "args_non_parallel",
                "args_parallel",
                "meta_non_parallel",
                "meta_parallel",
            ):
                dict_to_struct(item[name], getattr(task, name))
            fill_filters(task.input_filters, item["input_filters"])
        return pb.GetJobSpecResponse(spec=spec)

    async def StreamTaskInputs(
        self, request: pb.StreamTaskInputsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamTaskInputsResponse]:
        batch = request.batch_size or 1000
        async with self.ctx.reads() as session:
            job = await self._job(session, request.job_id)
            snapshot = _snapshot(job, request.task_order)
            if job.dataset_id is None:
                raise FailedPrecondition("the job's dataset was deleted", reason="DATASET_GONE")
            dataset = await session.get(Dataset, job.dataset_id)
            if dataset is None:
                raise FailedPrecondition("the job's dataset was deleted", reason="DATASET_GONE")
            # The inputs are fixed when the task starts (only this job writes to the dataset).
            plan = plan_filters(_pre_filters(dataset, snapshot))
            matches = iter(await images.matching(session, dataset.id, plan))
            while positions := list(islice(matches, batch)):
                rows = await images.rows_at(session, dataset.id, positions)
                response = pb.StreamTaskInputsResponse()
                for row in rows:
                    fill_image(response.images.add(), row._mapping)
                yield response

    async def ApplyTaskResult(
        self, request: pb.ApplyTaskResultRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        output = _output_from_proto(request.output)
        async with transaction(self.ctx.sessions) as session:
            job = await jobs.lock(session, request.job_id)
            done = await session.get(JobTaskResult, (job.id, request.task_order))
            if done is not None:
                return pb.ApplyTaskResultResponse(
                    already_applied=True,
                    images_updated=done.images_updated,
                    images_created=done.images_created,
                    images_removed=done.images_removed,
                )
            if job.status != "submitted":
                raise FailedPrecondition(
                    f"Job {job.id} is already {job.status}", reason="JOB_ALREADY_ENDED"
                )
            snapshot = _snapshot(job, request.task_order)
            dataset = await images.lock_dataset(session, job.dataset_id or 0)
            if dataset is None:
                raise FailedPrecondition("the job's dataset was deleted", reason="DATASET_GONE")
            output_types = snapshot["output_types"]
            try:
                counts = await self._apply_images(session, dataset, snapshot, output)
                new_filters = update_dataset_filters(
                    Filters.from_dict(dataset.filters), output.filters.to_filters(), output_types
                )
            except ImageRuleError as exc:
                raise FailedPrecondition(str(exc), reason="TASK_OUTPUT_RULE") from None
            dataset.filters = new_filters.to_dict()
            dataset.history = [
                *dataset.history,
                {"workflowtask": snapshot["dump"], "status": "done", "parallelization": {}},
            ]
            session.add(
                JobTaskResult(
                    job_id=job.id,
                    task_order=request.task_order,
                    images_updated=counts[0],
                    images_created=counts[1],
                    images_removed=counts[2],
                )
            )
            jobs.mark_task_done(
                job,
                request.task_order,
                _counts(request.calls) if request.HasField("calls") else None,
            )
            job.version += 1
            await session.flush()
            await jobs.emit_changed(session, self.ctx.subjects, job)
        self.ctx.outbox_written()
        return pb.ApplyTaskResultResponse(
            images_updated=counts[0], images_created=counts[1], images_removed=counts[2]
        )

    async def _apply_images(
        self, session: Any, dataset: Dataset, snapshot: dict[str, Any], output: TaskOutput
    ) -> tuple[int, int, int]:
        """The reference's rules for one output (§5.3 steps 4–7) as set operations."""
        output_types = snapshot["output_types"]
        edit = FacetEdit()
        if not output.image_list_updates and not output.image_list_removals:
            # Implicit update: every filtered input gets the task's output types.
            if not output_types:
                return (0, 0, 0)
            inputs = await images.matching(
                session, dataset.id, plan_filters(_pre_filters(dataset, snapshot))
            )
            updated = await images.add_types_at(session, dataset, inputs, output_types, edit)
            await edit.apply(session, dataset.id)
            return (updated, 0, 0)
        touched = [u.zarr_url for u in output.image_list_updates]
        touched += [u.origin for u in output.image_list_updates if u.origin]
        touched += list(output.image_list_removals)
        existing = await images.fetch(session, dataset.id, touched)
        changes = plan_image_changes(
            zarr_dir=dataset.zarr_dir,
            output=output,
            existing=existing,
            task_output_types=output_types,
        )
        await images.replace_many(session, dataset, changes.updated, existing, edit)
        await images.append(session, dataset, changes.created, edit)
        await images.remove_many(session, dataset, changes.removed, edit)
        await edit.apply(session, dataset.id)
        return (len(changes.updated), len(changes.created), len(changes.removed))

    async def ReportTaskProgress(
        self, request: pb.ReportTaskProgressRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            job = await jobs.lock(session, request.job_id)
            _snapshot(job, request.task_order)
            applied = await jobs.report_progress(
                session, self.ctx.subjects, job, request.task_order, _counts(request.calls)
            )
        if applied:
            self.ctx.outbox_written()
        return pb.ReportTaskProgressResponse(applied=applied)

    async def FinishJob(
        self, request: pb.FinishJobRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        # The proto allows DONE and FAILED only.
        statuses = {job_pb2.JOB_STATUS_DONE: "done", job_pb2.JOB_STATUS_FAILED: "failed"}
        async with transaction(self.ctx.sessions) as session:
            job = await jobs.lock(session, request.job_id)
            job = await jobs.finish(
                session,
                self.ctx.subjects,
                job,
                status=statuses[request.status],
                log=request.log,
                failed_task_order=request.failed_task_order
                if request.HasField("failed_task_order")
                else None,
                failed_task_calls=_counts(request.failed_task_calls)
                if request.HasField("failed_task_calls")
                else None,
            )
        self.ctx.outbox_written()
        return pb.FinishJobResponse(job=job_view(job))
