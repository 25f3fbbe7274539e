"""JobService (reference §3.2 "Jobs", §5.1), with WatchJob streaming the job's changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from fractal.events.v1 import job_events_pb2
from fractal.v2 import job_pb2
from fractal.v2 import job_service_pb2 as pb
from fractal.v2 import job_service_pb2_grpc as rpc
from fractal_api.context import ApiContext
from fractal_api.models import Job
from fractal_api.runner_folders import RunnerFolders
from fractal_api.store import collections, jobs, projects, requests, workflows
from fractal_api.submit_rules import (
    check_tasks_runnable,
    check_user_for_backend,
    pick_slurm_account,
    user_working_dir,
)
from fractal_api.views import job_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from fractal_grpc.pagination import decode_token, page_size, split_page

JOB_STATUS_DONE = job_pb2.JOB_STATUS_DONE
JOB_STATUS_FAILED = job_pb2.JOB_STATUS_FAILED
log = logging.getLogger("fractal.api.jobs")

# How often WatchJob re-reads the job even without an event (a safety net, not the mechanism).
WATCH_RESYNC_SECONDS = 5.0
# How often it re-reads the job when NATS is unreachable.
WATCH_POLL_SECONDS = 0.5


def _indices(request: pb.SubmitJobRequest, n: int) -> tuple[int, int]:
    """Reference ``set_start_and_last_task_index``."""
    first = request.first_task_index if request.HasField("first_task_index") else 0
    last = request.last_task_index if request.HasField("last_task_index") else n - 1
    violations = Violations()
    if last > n - 1:
        violations.add("last_task_index", f"must be at most {n - 1}")
    if first > last:
        violations.add("first_task_index", "must not be greater than last_task_index")
    if violations.items:
        raise InvalidArgument(
            f"Invalid values for first_task_index or last_task_index "
            f"(with {n} tasks): first={first}, last={last}",
            violations=violations.items,
        )
    return first, last


def _light(job: job_pb2.Job, sent_log: str | None) -> job_pb2.Job:
    """What WatchJob sends after its first message (``sent_log`` None): the job without its
    dumps (they never change), and without its log unless the log changed."""
    if sent_log is None:
        return job
    light = job_pb2.Job()
    light.CopyFrom(job)
    for name in ("project_dump", "workflow_dump", "dataset_dump"):
        light.ClearField(name)
    if light.log == sent_log:
        light.log = ""
    return light


class JobServicer(rpc.JobServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        # Live logs and downloads: from the runner, never from api's disk.
        self.folders = RunnerFolders(ctx.settings.runner_url, ctx.settings.jwt_private_key_pem())

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        me = current_user()
        user_id = me.user_id or 0
        settings = self.ctx.settings
        violations = Violations()
        worker_init = request.worker_init if request.HasField("worker_init") else None
        if worker_init is not None and not worker_init.strip():
            violations.add("worker_init", "must not be blank")
        violations.raise_if_any()
        async with transaction(self.ctx.sessions) as session:

            async def submit() -> Job:
                await jobs.hold_submission_rows(
                    session, request.project_id, request.workflow_id, request.dataset_id
                )
                dataset = await projects.dataset_checked(
                    session, request.project_id, request.dataset_id, user_id
                )
                workflow = await projects.workflow_checked(
                    session, request.project_id, request.workflow_id, user_id
                )
                project = await projects.get_checked(session, request.project_id, user_id)
                wftasks = (await workflows.task_list(session, [workflow.id]))[workflow.id]
                if not wftasks:
                    raise FailedPrecondition(
                        f"Workflow {workflow.id} has empty task_list", reason="WORKFLOW_EMPTY"
                    )
                first, last = _indices(request, len(wftasks))
                check_tasks_runnable(
                    await collections.inactive_packages(
                        session, [task.id for _, task in wftasks[first : last + 1]]
                    )
                )
                check_user_for_backend(settings.runner_backend, me.slurm_user, me.cache_dir)
                remote = settings.slurm_ssh_working_base_dir
                ssh_base = None if remote is None else str(remote)
                slurm_account = pick_slurm_account(
                    request.slurm_account if request.HasField("slurm_account") else None,
                    me.slurm_accounts,
                )
                await jobs.check_rate_limit(
                    session, project.id, workflow.id, dataset.id, settings.api_submit_rate_limit
                )
                return await jobs.submit(
                    session,
                    self.ctx.subjects,
                    project=project,
                    workflow=workflow,
                    dataset=dataset,
                    wftasks=wftasks,
                    first=first,
                    last=last,
                    user_id=user_id,
                    user_email=me.email,
                    slurm_account=slurm_account,
                    worker_init=worker_init,
                    working_base_dir=str(settings.runner_working_base_dir),
                    user_dir=lambda folder: user_working_dir(
                        settings.runner_backend, folder, me.cache_dir, ssh_base
                    ),
                )

            job = await requests.once(
                session,
                user_id,
                request,
                create=submit,
                replay=lambda earlier: projects.job_checked(
                    session, request.project_id, earlier, user_id
                ),
            )
        self.ctx.outbox_written()
        return pb.SubmitJobResponse(job=job_view(job))

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.ctx.reads() as session:
            job = await projects.job_checked(
                session, request.project_id, request.job_id, current_user().user_id or 0
            )
        log = None
        if request.show_tmp_logs and job.status == "submitted":
            log = await self.folders.read_log(job.id)
        return pb.GetJobResponse(job=job_view(job, log=log))

    async def DownloadJobFolder(
        self, request: pb.DownloadJobFolderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadJobFolderResponse]:
        async with self.ctx.reads() as session:
            job = await projects.job_checked(
                session, request.project_id, request.job_id, current_user().user_id or 0
            )
        async for chunk in self.folders.download(job.id):
            yield pb.DownloadJobFolderResponse(chunk=chunk)

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> Any:
        user_id = current_user().user_id or 0
        if request.workflow_id and not request.project_id:
            raise InvalidArgument(
                "workflow_id needs its project_id",
                violations=[("project_id", "must be set when workflow_id is")],
            )
        size = page_size(request.page_size)
        query = f"jobs:{request.project_id}:{request.workflow_id}"
        state = decode_token(request.page_token, query, ("before",))
        rows = await jobs.list_page(
            self.ctx.raw,
            user_id,
            request.project_id,
            before_id=state["before"] if state else None,
            limit=size + 1,
            workflow_id=request.workflow_id,
            with_log=request.include_logs,
        )
        if not rows and request.project_id:
            # Rows come only through the caller's memberships (and a job's workflow is of the
            # job's project), so a page with rows proves the project and workflow are the
            # caller's; an empty one may be someone else's, which answers NOT_FOUND.
            async with self.ctx.reads() as session:
                if request.workflow_id:
                    await projects.workflow_checked(
                        session, request.project_id, request.workflow_id, user_id
                    )
                else:
                    await projects.get_checked(session, request.project_id, user_id)
        page, token = split_page(rows, size, query, lambda j: {"before": j["id"]})
        return pb.ListJobsResponse(
            jobs=[job_view(j, with_log=request.include_logs) for j in page],
            next_page_token=token,
        )

    async def StopJob(self, request: pb.StopJobRequest, context: grpc.aio.ServicerContext) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            await projects.job_checked(session, request.project_id, request.job_id, user_id)
            job = await jobs.lock(session, request.job_id)
            job = await jobs.request_stop(session, self.ctx.subjects, job)
        self.ctx.outbox_written()
        return pb.StopJobResponse(job=job_view(job))

    async def _load(self, job_id: int) -> job_pb2.Job:
        async with self.ctx.reads() as session:
            job = await session.get(Job, job_id)
        if job is None:
            raise NotFound(f"Job {job_id} not found")
        return job_view(job)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        user_id = current_user().user_id or 0
        async with self.ctx.reads() as session:
            await projects.job_checked(session, request.project_id, request.job_id, user_id)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_event(msg: Any) -> None:
            queue.put_nowait(msg.data)

        # Subscribe before reading the current state, so no change falls in between. Without
        # NATS the watch still works, by re-reading the job more often.
        sub = None
        resync = WATCH_RESYNC_SECONDS
        try:
            assert self.ctx.bus is not None
            sub = await self.ctx.bus.nc.subscribe(
                self.ctx.subjects.job_event(request.job_id), cb=on_event
            )
        except Exception:  # noqa: BLE001 - degrade to polling
            log.warning("WatchJob without NATS events; polling job %s", request.job_id)
            resync = WATCH_POLL_SECONDS
        try:
            state = await self._load(request.job_id)
            sent = 0
            sent_log: str | None = None
            while True:
                if state.version > sent:
                    sent = state.version
                    yield pb.WatchJobResponse(job=_light(state, sent_log))
                    sent_log = state.log
                if state.status in (JOB_STATUS_DONE, JOB_STATUS_FAILED):
                    return
                try:
                    data = await asyncio.wait_for(queue.get(), resync)
                    state = job_events_pb2.JobChanged.FromString(data).job
                except TimeoutError:
                    state = await self._load(request.job_id)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
