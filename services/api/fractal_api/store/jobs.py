"""Jobs: submission with snapshots, per-task results, the end of a job, stop requests.

Every change of a job bumps its ``version`` and records a JobChanged event in the outbox in the
same transaction; commands (submit, stop) go through the outbox too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import ColumnElement, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.sql.base import ExecutableOption

from fractal.events.v1 import job_events_pb2
from fractal_api import views
from fractal_api.models import (
    Dataset,
    Job,
    JobTaskResult,
    Project,
    ProjectMember,
    Task,
    Workflow,
    WorkflowTask,
    outbox,
)
from fractal_api.store import RawStatement, any_of, ids_across_projects, write_unique
from fractal_grpc.events.bus import Subjects
from fractal_grpc.events.outbox import add_to_outbox
from fractal_grpc.grpckit.errors import FailedPrecondition, NotFound, ResourceExhausted
from fractal_grpc.jobfolder import job_folder_name
from fractal_grpc.jobs import progress
from fractal_grpc.jobs.progress import CallCounts

TERMINAL = ("done", "failed")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def wftask_dump(wftask: WorkflowTask, task: Task) -> dict[str, Any]:
    """The reference's WorkflowTaskDumpV2."""
    return {
        "id": wftask.id,
        "workflow_id": wftask.workflow_id,
        "order": wftask.order,
        "is_legacy_task": False,
        "input_filters": wftask.input_filters,
        "task_id": task.id,
        "task": views.task_dump(task),
        "task_legacy_id": None,
        "task_legacy": None,
    }


def task_snapshot(wftask: WorkflowTask, task: Task) -> dict[str, Any]:
    """What the runner needs to run one workflow task, frozen at submission."""
    return {
        "order": wftask.order,
        "workflow_task_id": wftask.id,
        "task_id": task.id,
        "task_name": task.name,
        "task_type": wftask.task_type,
        "command_non_parallel": task.command_non_parallel,
        "command_parallel": task.command_parallel,
        "args_non_parallel": wftask.args_non_parallel,
        "args_parallel": wftask.args_parallel,
        "meta_non_parallel": wftask.meta_non_parallel,
        "meta_parallel": wftask.meta_parallel,
        "input_filters": wftask.input_filters,
        "input_types": task.input_types,
        "output_types": task.output_types,
        "dump": wftask_dump(wftask, task),
    }


async def emit_changed(session: AsyncSession, subjects: Subjects, job: Job) -> None:
    # Without the dumps, which never change: a watcher has them from the job it read first.
    await add_to_outbox(
        session,
        outbox,
        subjects.job_event(job.id),
        job_events_pb2.JobChanged(job=views.job_view(job, with_log=True, with_dumps=False)),
    )


async def hold_submission_rows(
    session: AsyncSession, project_id: int, workflow_id: int, dataset_id: int
) -> None:
    """Key-share locks on the project, workflow and dataset rows a submission is about to name,
    taken before they are read: a concurrent delete of one of them (which locks its row FOR
    UPDATE, or deletes it) either commits first, and the submission then finds the row gone
    (NOT_FOUND), or waits for the submission and then sees its job (FAILED_PRECONDITION).
    Without them the job's insert could meet an already deleted row (a foreign-key violation).
    Always in this order, like every other path that locks more than one of them."""
    for model, row_id in ((Project, project_id), (Workflow, workflow_id), (Dataset, dataset_id)):
        await session.execute(
            select(model.id).where(model.id == row_id).with_for_update(read=True, key_share=True)
        )


async def check_rate_limit(
    session: AsyncSession, project_id: int, workflow_id: int, dataset_id: int, seconds: int
) -> None:
    if seconds <= 0:
        return
    since = datetime.now(UTC) - timedelta(seconds=seconds)
    recent = await session.scalar(
        select(Job.id)
        .where(
            Job.project_id == project_id,
            Job.workflow_id == workflow_id,
            Job.dataset_id == dataset_id,
            Job.start_timestamp > since,
        )
        .limit(1)
    )
    if recent is not None:
        raise ResourceExhausted(
            f"The endpoint 'POST /job/submit/' is rate limited: wait {seconds} seconds between "
            "two submissions of the same project, workflow and dataset.",
            reason="SUBMIT_RATE_LIMITED",
        )


async def submit(
    session: AsyncSession,
    subjects: Subjects,
    *,
    project: Project,
    workflow: Workflow,
    dataset: Dataset,
    wftasks: Sequence[tuple[WorkflowTask, Task]],
    first: int,
    last: int,
    user_id: int,
    user_email: str,
    slurm_account: str | None,
    worker_init: str | None,
    working_base_dir: str,
    user_dir: Callable[[str], str] = lambda folder: folder,
) -> Job:
    slice_ = wftasks[first : last + 1]
    job = Job(
        project_id=project.id,
        workflow_id=workflow.id,
        dataset_id=dataset.id,
        user_id=user_id,
        user_email=user_email,
        slurm_account=slurm_account,
        worker_init=worker_init,
        first_task_index=first,
        last_task_index=last,
        status="submitted",
        project_dump={
            "id": project.id,
            "name": project.name,
            "timestamp_created": _iso(project.created_at),
        },
        workflow_dump={
            "id": workflow.id,
            "name": workflow.name,
            "project_id": workflow.project_id,
            "timestamp_created": _iso(workflow.created_at),
        },
        dataset_dump={
            "id": dataset.id,
            "name": dataset.name,
            "project_id": dataset.project_id,
            "timestamp_created": _iso(dataset.created_at),
            "zarr_dir": dataset.zarr_dir,
            "filters": dataset.filters,
        },
        tasks_snapshot=[task_snapshot(w, t) for w, t in slice_],
        task_statuses=progress.initial_entries(
            {"workflow_task_id": w.id, "order": w.order, "task_name": t.name} for w, t in slice_
        ),
        version=1,
    )
    # The partial unique index on submitted jobs decides between racing submissions.
    await write_unique(session, job)
    folder = job_folder_name(project.id, workflow.id, job.id, job.start_timestamp.astimezone(UTC))
    job.working_dir = f"{working_base_dir.rstrip('/')}/{folder}"
    job.working_dir_user = user_dir(job.working_dir)
    await session.flush()
    await add_to_outbox(
        session, outbox, subjects.job_submit, job_events_pb2.JobSubmitted(job_id=job.id)
    )
    await emit_changed(session, subjects, job)
    return job


async def lock(session: AsyncSession, job_id: int) -> Job:
    result = await session.execute(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    job = result.scalar_one_or_none()
    if job is None:
        raise NotFound(f"Job {job_id} not found", metadata={"job_id": str(job_id)})
    return job


async def report_progress(
    session: AsyncSession, subjects: Subjects, job: Job, order: int, counts: CallCounts
) -> bool:
    """A running task's progress (the job is locked); False when it changed nothing."""
    if job.status in TERMINAL:
        return False
    entries, changed = progress.apply_report(job.task_statuses, order, counts)
    if job.started_at is None:
        job.started_at = datetime.now(UTC)
        changed = True
    if not changed:
        return False
    job.task_statuses = entries
    job.version += 1
    await session.flush()
    await emit_changed(session, subjects, job)
    return True


def mark_task_done(job: Job, order: int, counts: CallCounts | None) -> None:
    job.task_statuses = progress.mark_done(job.task_statuses, order, counts)
    if job.started_at is None:
        job.started_at = datetime.now(UTC)


async def applied_orders(session: AsyncSession, job_id: int) -> list[int]:
    result = await session.execute(
        select(JobTaskResult.task_order)
        .where(JobTaskResult.job_id == job_id)
        .order_by(JobTaskResult.task_order)
    )
    return list(result.scalars())


async def finish(
    session: AsyncSession,
    subjects: Subjects,
    job: Job,
    *,
    status: str,
    log: str,
    failed_task_order: int | None,
    failed_task_calls: CallCounts | None = None,
) -> Job:
    """End a job (idempotent: an ended job is returned unchanged)."""
    if job.status in TERMINAL:
        return job
    job.status = status
    job.log = log
    job.end_timestamp = datetime.now(UTC)
    if status == "failed" and failed_task_order is not None:
        snapshot = next((t for t in job.tasks_snapshot if t["order"] == failed_task_order), None)
        if snapshot is not None and job.dataset_id is not None:
            dataset = await session.get(Dataset, job.dataset_id, with_for_update=True)
            if dataset is not None:
                dataset.history = [
                    *dataset.history,
                    {
                        "workflowtask": snapshot["dump"],
                        "status": "failed",
                        "parallelization": {},
                    },
                ]
    job.task_statuses = progress.end_of_job(
        job.task_statuses, status, failed_task_order, failed_task_calls
    )
    job.version += 1
    await session.flush()
    await emit_changed(session, subjects, job)
    return job


async def request_stop(session: AsyncSession, subjects: Subjects, job: Job) -> Job:
    if job.status in TERMINAL:
        raise FailedPrecondition(
            f"Job {job.id} is already {job.status}", reason="JOB_ALREADY_ENDED"
        )
    if not job.stop_requested:
        job.stop_requested = True
        job.version += 1
        await session.flush()
        await add_to_outbox(
            session, outbox, subjects.job_stop, job_events_pb2.JobStopRequested(job_id=job.id)
        )
    return job


async def list_page(
    pg: asyncpg.Pool,
    user_id: int,
    project_id: int,
    *,
    before_id: int | None,
    limit: int,
    workflow_id: int = 0,
    with_log: bool = False,
) -> list[asyncpg.Record]:
    """A page of the jobs of the user's projects (or of one project, or of one workflow),
    newest first, as records of the raw pool (``views.job_view`` reads them). The rows come
    without their task snapshots (a list never shows them) and, unless ``with_log``, without
    their logs."""
    statement = _list_statement(
        one_project=bool(project_id),
        one_workflow=bool(workflow_id),
        bounded=before_id is not None,
        with_log=with_log,
    )
    return await statement.fetch(
        pg,
        user_id=user_id,
        project_id=project_id,
        workflow_id=workflow_id,
        before_id=before_id,
        limit=limit,
    )


_LIST_LEFT_OUT = ("tasks_snapshot", "log")


@lru_cache(maxsize=16)
def _list_statement(
    *, one_project: bool, one_workflow: bool, bounded: bool, with_log: bool
) -> RawStatement:
    """The query of ``list_page``, one compiled statement per shape: the ids come first
    (``ids_across_projects``), then the rows by key (``any_of``)."""
    member_projects = select(ProjectMember.project_id).where(
        ProjectMember.user_id == bindparam("user_id")
    )
    if one_project:
        member_projects = member_projects.where(ProjectMember.project_id == bindparam("project_id"))
    members = member_projects.subquery("members")
    conditions: list[ColumnElement[bool]] = [Job.project_id == members.c.project_id]
    if one_workflow:
        conditions.append(Job.workflow_id == bindparam("workflow_id"))
    if bounded:
        conditions.append(Job.id < bindparam("before_id"))
    newest = ids_across_projects(
        members, Job.id, conditions, descending=True, limit=bindparam("limit")
    )
    table = Job.__table__
    columns = [c for c in table.c if c.name not in _LIST_LEFT_OUT or (with_log and c.name == "log")]
    return RawStatement.of(
        select(*columns).where(table.c.id == any_of(newest)).order_by(table.c.id.desc())
    )


def list_options(*, with_log: bool) -> list[ExecutableOption]:
    """Loader options of a job list: no task snapshot (no list shows it) and no log unless
    ``with_log``; reading a left-out column raises instead of loading it."""
    options: list[ExecutableOption] = [defer(Job.tasks_snapshot, raiseload=True)]
    if not with_log:
        options.append(defer(Job.log, raiseload=True))
    return options


async def submitted_for(session: AsyncSession, dataset_id: int, workflow_id: int) -> list[Job]:
    """The submitted jobs of a dataset and workflow (at most one, by the unique index)."""
    result = await session.execute(
        select(Job)
        .where(
            Job.dataset_id == dataset_id,
            Job.workflow_id == workflow_id,
            Job.status == "submitted",
        )
        .order_by(Job.id)
    )
    return list(result.scalars())
