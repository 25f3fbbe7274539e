"""The superuser's queries across every user (AdminService): projects, jobs and tasks with
their relationships. No membership checks here: AdminService is for superusers only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Job, Project, ProjectMember, Task, User, Workflow, WorkflowTask
from fractal_api.store import any_of, ids_across_projects, jobs
from fractal_grpc.admin.jobs import JobFilter
from fractal_grpc.admin.tasks import TaskQuery, kind_owner_filter
from fractal_grpc.grpckit.errors import NotFound


def _member_of(user_id: int) -> Select[Any]:
    return select(ProjectMember.project_id).where(ProjectMember.user_id == user_id)


async def list_projects(
    session: AsyncSession,
    *,
    project_id: int | None,
    user_id: int | None,
    after_id: int,
    limit: int,
) -> Sequence[Project]:
    conditions: list[ColumnElement[bool]] = [Project.id > after_id]
    if project_id is not None:
        conditions.append(Project.id == project_id)
    if user_id is not None:
        conditions.append(Project.id.in_(_member_of(user_id)))
    result = await session.execute(
        select(Project).where(and_(*conditions)).order_by(Project.id).limit(limit)
    )
    return result.scalars().all()


def _job_conditions(flt: JobFilter) -> list[ColumnElement[bool]]:
    """The filters of ``flt`` but ``user_id`` (which ``list_jobs`` applies by project)."""
    conditions: list[ColumnElement[bool]] = []
    for column, value in (
        (Job.id, flt.job_id),
        (Job.project_id, flt.project_id),
        (Job.dataset_id, flt.dataset_id),
        (Job.workflow_id, flt.workflow_id),
        (Job.status, flt.status),
    ):
        if value is not None:
            conditions.append(column == value)
    if flt.start_min is not None:
        conditions.append(Job.start_timestamp >= flt.start_min)
    if flt.start_max is not None:
        conditions.append(Job.start_timestamp <= flt.start_max)
    if flt.end_min is not None:
        conditions.append(Job.end_timestamp >= flt.end_min)
    if flt.end_max is not None:
        conditions.append(Job.end_timestamp <= flt.end_max)
    return conditions


async def list_jobs(
    session: AsyncSession,
    flt: JobFilter,
    *,
    before_id: int | None,
    limit: int,
    with_log: bool = False,
) -> Sequence[Job]:
    """A page of the jobs matching ``flt``, newest first; as ``jobs.list_page``, the rows come
    without their task snapshots and, unless ``with_log``, without their logs."""
    conditions = _job_conditions(flt)
    if before_id is not None:
        conditions.append(Job.id < before_id)
    query = select(Job).order_by(Job.id.desc()).options(*jobs.list_options(with_log=with_log))
    if flt.user_id is None:
        query = query.where(*conditions).limit(limit)
    else:
        # The user's projects' jobs, each project read from its (project_id, id) index, as
        # ListJobs does: not a scan of every job filtered by membership.
        members = _member_of(flt.user_id).subquery("members")
        scoped = [Job.project_id == members.c.project_id, *conditions]
        ids = ids_across_projects(members, Job.id, scoped, descending=True, limit=limit)
        query = query.where(Job.id == any_of(ids))
    result = await session.execute(query)
    return result.scalars().all()


async def get_job(session: AsyncSession, job_id: int) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFound(f"Job {job_id} not found", metadata={"job_id": str(job_id)})
    return job


def _task_conditions(query: TaskQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.task_id is not None:
        conditions.append(Task.id == query.task_id)
    if query.source is not None:
        conditions.append(Task.source.icontains(query.source, autoescape=True))
    if query.version is not None:
        conditions.append(Task.version == query.version)
    if query.name is not None:
        conditions.append(Task.name.icontains(query.name, autoescape=True))
    if query.owner is not None:
        conditions.append(Task.owner == query.owner)
    owned = kind_owner_filter(query.kind)
    if owned is not None:
        conditions.append(Task.owner.is_not(None) if owned else Task.owner.is_(None))
    return conditions


async def count_tasks(session: AsyncSession, query: TaskQuery) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Task).where(*_task_conditions(query))
    )
    return int(count or 0)


async def query_tasks(
    session: AsyncSession, query: TaskQuery, *, after_id: int, limit: int
) -> Sequence[Task]:
    result = await session.execute(
        select(Task)
        .where(Task.id > after_id, *_task_conditions(query))
        .order_by(Task.id)
        .limit(limit)
    )
    return result.scalars().all()


@dataclass
class Relationship:
    """A workflow using a task, its project, and the project's members (id, email)."""

    workflow_id: int
    workflow_name: str
    project_id: int
    project_name: str
    users: list[tuple[int, str]]


async def task_relationships(
    session: AsyncSession, task_ids: Sequence[int]
) -> dict[int, list[Relationship]]:
    """For each task id, the workflows whose task list holds it (each once, by id)."""
    if not task_ids:
        return {}
    uses = (
        await session.execute(
            select(WorkflowTask.task_id, Workflow.id, Workflow.name, Project.id, Project.name)
            .join(Workflow, Workflow.id == WorkflowTask.workflow_id)
            .join(Project, Project.id == Workflow.project_id)
            .where(WorkflowTask.task_id.in_(task_ids))
            .distinct()
            .order_by(WorkflowTask.task_id, Workflow.id)
        )
    ).all()
    project_ids = sorted({row[3] for row in uses})
    members: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if project_ids:
        rows = await session.execute(
            select(ProjectMember.project_id, User.id, User.email)
            .join(User, User.id == ProjectMember.user_id)
            .where(ProjectMember.project_id.in_(project_ids))
            .order_by(ProjectMember.project_id, User.id)
        )
        for project_id, user_id, email in rows:
            members[project_id].append((user_id, email))
    found: dict[int, list[Relationship]] = defaultdict(list)
    for task_id, workflow_id, workflow_name, project_id, project_name in uses:
        found[task_id].append(
            Relationship(workflow_id, workflow_name, project_id, project_name, members[project_id])
        )
    return found
