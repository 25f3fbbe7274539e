"""AdminService (reference /admin/v2, /api/settings/): a superuser's view of every project, job
and task. Access (superuser only) is declared in ``access.py``; the rules live in
``fractal_grpc.admin``; the queries in ``store/admin.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from google.protobuf import timestamp_pb2

from fractal.v2 import admin_pb2
from fractal.v2 import admin_service_pb2 as pb
from fractal.v2 import admin_service_pb2_grpc as rpc
from fractal_api.context import ApiContext
from fractal_api.runner_folders import RunnerFolders
from fractal_api.store import admin, jobs
from fractal_api.views import JOB_STATUSES, job_view, project_view, task_view
from fractal_grpc.admin.jobs import (
    JobFilter,
    job_filter_violations,
    mark_failed_log,
    mark_failed_refusal,
)
from fractal_grpc.admin.settings_view import masked_settings
from fractal_grpc.admin.tasks import TaskQuery, result_limit, too_many_results
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import Violations
from fractal_grpc.pagination import decode_token, page_size, query_fingerprint, split_page

_STATUS_NAMES = {value: name for name, value in JOB_STATUSES.items()}
_KINDS = {admin_pb2.ADMIN_TASK_KIND_COMMON: "common", admin_pb2.ADMIN_TASK_KIND_USERS: "users"}
# Seconds of 0001-01-01 and of 9999-12-31T23:59:59 (the range of a valid Timestamp).
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _instant(request: pb.ListAllJobsRequest, name: str, violations: Violations) -> datetime | None:
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    value: timestamp_pb2.Timestamp = getattr(request, name)
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 10**9):
        violations.add(name, "must be a valid timestamp")
        return None
    return value.ToDatetime(tzinfo=UTC)


def job_filter(request: pb.ListAllJobsRequest) -> JobFilter:
    """The request's filters, checked (INVALID_ARGUMENT naming the fields)."""
    violations = Violations()
    flt = JobFilter(
        job_id=_optional(request, "job_id"),
        user_id=_optional(request, "user_id"),
        project_id=_optional(request, "project_id"),
        dataset_id=_optional(request, "dataset_id"),
        workflow_id=_optional(request, "workflow_id"),
        status=_STATUS_NAMES.get(request.status),
        start_min=_instant(request, "start_time_min", violations),
        start_max=_instant(request, "start_time_max", violations),
        end_min=_instant(request, "end_time_min", violations),
        end_max=_instant(request, "end_time_max", violations),
    )
    for field, why in job_filter_violations(flt):
        violations.add(field, why)
    violations.raise_if_any()
    return flt


def task_query(request: pb.QueryTasksRequest) -> TaskQuery:
    return TaskQuery(
        task_id=_optional(request, "task_id"),
        source=_optional(request, "source"),
        version=_optional(request, "version"),
        name=_optional(request, "name"),
        owner=_optional(request, "owner"),
        kind=_KINDS.get(request.kind),
    )


class AdminServicer(rpc.AdminServiceServicer):
    def __init__(self, ctx: ApiContext, folders: RunnerFolders) -> None:
        self.ctx = ctx
        # Shared with JobService: logs and downloads come from the runner.
        self.folders = folders

    async def ListAllProjects(
        self, request: pb.ListAllProjectsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        project_id, user_id = _optional(request, "project_id"), _optional(request, "user_id")
        size = page_size(request.page_size)
        query = f"admin-projects:{query_fingerprint(project_id, user_id)}"
        state = decode_token(request.page_token, query, ("after",)) or {"after": 0}
        async with self.ctx.reads() as session:
            rows = await admin.list_projects(
                session,
                project_id=project_id,
                user_id=user_id,
                after_id=state["after"],
                limit=size + 1,
            )
        page, token = split_page(rows, size, query, lambda p: {"after": p.id})
        return pb.ListAllProjectsResponse(
            projects=[project_view(p) for p in page], next_page_token=token
        )

    async def ListAllJobs(
        self, request: pb.ListAllJobsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        flt = job_filter(request)
        size = page_size(request.page_size)
        query = f"admin-jobs:{query_fingerprint(*flt.fingerprint())}"
        state = decode_token(request.page_token, query, ("before",))
        async with self.ctx.reads() as session:
            rows = await admin.list_jobs(
                session,
                flt,
                before_id=state["before"] if state else None,
                limit=size + 1,
                with_log=request.include_logs,
            )
        page, token = split_page(rows, size, query, lambda j: {"before": j.id})
        return pb.ListAllJobsResponse(
            jobs=[job_view(j, with_log=request.include_logs) for j in page],
            next_page_token=token,
        )

    async def GetAnyJob(
        self, request: pb.GetAnyJobRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            job = await admin.get_job(session, request.job_id)
        log = None
        if request.show_tmp_logs and job.status == "submitted":
            log = await self.folders.read_log(job.id)
        return pb.GetAnyJobResponse(job=job_view(job, log=log))

    async def MarkJobFailed(
        self, request: pb.MarkJobFailedRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            job = await jobs.lock(session, request.job_id)
            refusal = mark_failed_refusal(job.id, job.status)
            if refusal is not None:
                raise refusal
            job = await jobs.finish(
                session,
                self.ctx.subjects,
                job,
                status="failed",
                log=mark_failed_log(job.log, datetime.now(UTC)),
                failed_task_order=None,
            )
        self.ctx.outbox_written()
        return pb.MarkJobFailedResponse(job=job_view(job))

    async def StopAnyJob(
        self, request: pb.StopAnyJobRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            job = await jobs.lock(session, request.job_id)
            job = await jobs.request_stop(session, self.ctx.subjects, job)
        self.ctx.outbox_written()
        return pb.StopAnyJobResponse(job=job_view(job))

    async def DownloadAnyJobFolder(
        self, request: pb.DownloadAnyJobFolderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadAnyJobFolderResponse]:
        async with self.ctx.reads() as session:
            job = await admin.get_job(session, request.job_id)
        async for chunk in self.folders.download(job.id):
            yield pb.DownloadAnyJobFolderResponse(chunk=chunk)

    async def QueryTasks(
        self, request: pb.QueryTasksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        query = task_query(request)
        limit = result_limit(request.max_number_of_results)
        size = page_size(request.page_size)
        token_query = f"admin-tasks:{query_fingerprint(*query.fingerprint(), limit)}"
        state = decode_token(request.page_token, token_query, ("after",))
        async with self.ctx.reads() as session:
            if state is None:  # the limit is checked once, on the first page
                refusal = too_many_results(await admin.count_tasks(session, query), limit)
                if refusal is not None:
                    raise refusal
            rows = await admin.query_tasks(
                session, query, after_id=state["after"] if state else 0, limit=size + 1
            )
            page, token = split_page(rows, size, token_query, lambda t: {"after": t.id})
            uses = await admin.task_relationships(session, [t.id for t in page])
        return pb.QueryTasksResponse(
            tasks=[_task_info(t, uses.get(t.id, [])) for t in page], next_page_token=token
        )

    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        values = {f"FRACTAL_{k.upper()}": v for k, v in self.ctx.settings.model_dump().items()}
        return pb.GetSettingsResponse(settings=masked_settings(values))


def _task_info(task: Any, uses: list[admin.Relationship]) -> admin_pb2.TaskInfo:
    info = admin_pb2.TaskInfo(task=task_view(task, with_schemas=False))
    for use in uses:
        rel = info.relationships.add(
            workflow_id=use.workflow_id,
            workflow_name=use.workflow_name,
            project_id=use.project_id,
            project_name=use.project_name,
        )
        for user_id, email in use.users:
            rel.project_users.add(id=user_id, email=email)
    return info
