"""Workflows and their ordered task lists."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from sqlalchemy import BigInteger, and_, any_, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Job, ProjectMember, Task, Workflow, WorkflowTask
from fractal_api.store import RawStatement, any_of, ids_across_projects, write_unique
from fractal_api.store.tasks import tasks_by_id
from fractal_grpc.grpckit.errors import InvalidArgument, NotFound


async def create(session: AsyncSession, project_id: int, name: str) -> Workflow:
    workflow = Workflow(project_id=project_id, name=name)
    await write_unique(session, workflow)
    return workflow


async def task_list(
    session: AsyncSession, workflow_ids: Sequence[int]
) -> dict[int, list[tuple[WorkflowTask, Task]]]:
    """The task lists of several workflows, in order, with their tasks (one query), as ORM
    rows for the methods that read or change one workflow (a list reads ``task_lists``)."""
    result: dict[int, list[tuple[WorkflowTask, Task]]] = {wid: [] for wid in workflow_ids}
    query = (
        select(WorkflowTask, Task)
        .join(Task, Task.id == WorkflowTask.task_id)
        .where(WorkflowTask.workflow_id.in_(workflow_ids))
        .order_by(WorkflowTask.workflow_id, WorkflowTask.order)
    )
    rows = await session.execute(query)
    for wftask, task in rows:
        result[wftask.workflow_id].append((wftask, task))
    return result


async def list_page(
    pg: asyncpg.Pool, user_id: int, project_id: int, *, after_id: int, limit: int
) -> list[asyncpg.Record]:
    """A page of the workflows of the projects ``user_id`` is a member of (or of one of them,
    ``project_id``), by id, as records of the raw pool. Rows come only through the caller's
    memberships: a page with rows proves that the project is the caller's."""
    statement = _LIST_OF_PROJECT if project_id else _LIST_FOR_USER
    return await statement.fetch(
        pg, user_id=user_id, project_id=project_id, after_id=after_id, limit=limit
    )


async def task_lists(
    pg: asyncpg.Pool, workflow_ids: Sequence[int], *, with_schemas: bool
) -> dict[int, list[tuple[asyncpg.Record, asyncpg.Record]]]:
    """``task_list`` for a page of a list, as records of the raw pool: the workflow tasks,
    then each of their tasks once (a task used by many workflows of the page is read once)."""
    result: dict[int, list[tuple[asyncpg.Record, asyncpg.Record]]] = {
        wid: [] for wid in workflow_ids
    }
    wftasks = await _TASK_LISTS.fetch(pg, workflow_ids=list(workflow_ids))
    if not wftasks:
        return result
    task_ids = list({row["task_id"] for row in wftasks})
    found = await tasks_by_id(with_schemas).fetch(pg, task_ids=task_ids)
    by_id = {row["id"]: row for row in found}
    for row in wftasks:
        result[row["workflow_id"]].append((row, by_id[row["task_id"]]))
    return result


def _list_statement(*, one_project: bool) -> RawStatement:
    """The ids come first (``ids_across_projects``), then the rows by key (``any_of``)."""
    member_projects = select(ProjectMember.project_id).where(
        ProjectMember.user_id == bindparam("user_id")
    )
    if one_project:
        member_projects = member_projects.where(ProjectMember.project_id == bindparam("project_id"))
    members = member_projects.subquery("members")
    bounds = [Workflow.project_id == members.c.project_id, Workflow.id > bindparam("after_id")]
    first = ids_across_projects(
        members, Workflow.id, bounds, descending=False, limit=bindparam("limit")
    )
    return RawStatement.of(
        select(*Workflow.__table__.c).where(Workflow.id == any_of(first)).order_by(Workflow.id)
    )


_LIST_OF_PROJECT = _list_statement(one_project=True)
_LIST_FOR_USER = _list_statement(one_project=False)
_TASK_LISTS = RawStatement.of(
    select(*WorkflowTask.__table__.c)
    .where(WorkflowTask.workflow_id == any_(bindparam("workflow_ids", type_=ARRAY(BigInteger))))
    .order_by(WorkflowTask.workflow_id, WorkflowTask.order)
)


async def lock(session: AsyncSession, workflow_id: int) -> None:
    """Serialise the changes of one workflow's task list (insert, reorder, delete)."""
    await session.execute(select(Workflow.id).where(Workflow.id == workflow_id).with_for_update())


async def rename(session: AsyncSession, workflow: Workflow, name: str) -> None:
    """The unique (project_id, name) constraint decides (ALREADY_EXISTS through conflicts)."""
    workflow.name = name
    await write_unique(session, workflow)


def reorder(listing: Sequence[tuple[WorkflowTask, Task]], ordered_ids: Sequence[int]) -> None:
    """Give each workflow task the position of its id in ``ordered_ids`` (a checked
    permutation of the listing's ids); the caller's flush writes it."""
    by_id = {wftask.id: wftask for wftask, _ in listing}
    for position, wftask_id in enumerate(ordered_ids):
        by_id[wftask_id].order = position


async def submitted_jobs(session: AsyncSession, workflow_id: int) -> list[int]:
    """The ids of the SUBMITTED jobs of a workflow."""
    rows = await session.execute(
        select(Job.id)
        .where(Job.workflow_id == workflow_id, Job.status == "submitted")
        .order_by(Job.id)
    )
    return list(rows.scalars())


async def delete_workflow(session: AsyncSession, workflow_id: int) -> None:
    """Delete a workflow; its workflow tasks go by cascade, its jobs' links are set to NULL (the
    foreign keys' ON DELETE rules); the jobs keep their snapshot."""
    await session.execute(delete(Workflow).where(Workflow.id == workflow_id))


async def delete_task(session: AsyncSession, wftask: WorkflowTask) -> None:
    """Delete a workflow task and move the ones after it up one position."""
    await session.execute(delete(WorkflowTask).where(WorkflowTask.id == wftask.id))
    await session.execute(
        update(WorkflowTask)
        .where(WorkflowTask.workflow_id == wftask.workflow_id, WorkflowTask.order > wftask.order)
        .values(order=WorkflowTask.order - 1)
    )


async def users_of_task(
    session: AsyncSession, task_id: int, user_id: int
) -> list[tuple[int, int, str, bool]]:
    """(project_id, workflow_id, workflow name, the user is a member) of every workflow that
    uses a task."""
    rows = await session.execute(
        select(Workflow.project_id, Workflow.id, Workflow.name, ProjectMember.user_id.is_not(None))
        .join(WorkflowTask, WorkflowTask.workflow_id == Workflow.id)
        .outerjoin(
            ProjectMember,
            and_(ProjectMember.project_id == Workflow.project_id, ProjectMember.user_id == user_id),
        )
        .where(WorkflowTask.task_id == task_id)
        .distinct()
        .order_by(Workflow.id)
    )
    return [(r[0], r[1], r[2], bool(r[3])) for r in rows]


async def insert_task(
    session: AsyncSession, workflow: Workflow, wftask: WorkflowTask, order: int | None
) -> WorkflowTask:
    """Insert at ``order`` (default: the end) and shift the tasks after it."""
    await lock(session, workflow.id)
    count = len((await task_list(session, [workflow.id]))[workflow.id])
    if order is None:
        order = count
    if order > count:
        raise InvalidArgument(
            f"order: must be at most {count} (the length of the task list)",
            violations=[("order", f"must be between 0 and {count}")],
        )
    await session.execute(
        update(WorkflowTask)
        .where(WorkflowTask.workflow_id == workflow.id, WorkflowTask.order >= order)
        .values(order=WorkflowTask.order + 1)
    )
    wftask.workflow_id = workflow.id
    wftask.order = order
    session.add(wftask)
    await session.flush()
    await session.refresh(wftask)
    return wftask


async def workflow_task(
    session: AsyncSession, workflow_id: int, workflow_task_id: int
) -> tuple[WorkflowTask, Task]:
    """One workflow task of a workflow, with its task."""
    row = (
        await session.execute(
            select(WorkflowTask, Task)
            .join(Task, Task.id == WorkflowTask.task_id)
            .where(WorkflowTask.id == workflow_task_id, WorkflowTask.workflow_id == workflow_id)
        )
    ).first()
    if row is None:
        # The same answer for a missing id and for a task of another workflow.
        raise NotFound(
            "Workflow task not found", metadata={"workflow_task_id": str(workflow_task_id)}
        )
    return row[0], row[1]
