"""Workflows and their ordered task lists."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Task, Workflow, WorkflowTask
from fractal_api.store import write_unique
from fractal_grpc.grpckit.errors import InvalidArgument, NotFound


async def create(session: AsyncSession, project_id: int, name: str) -> Workflow:
    workflow = Workflow(project_id=project_id, name=name)
    await write_unique(session, workflow)
    return workflow


async def task_list(
    session: AsyncSession, workflow_ids: Sequence[int]
) -> dict[int, list[tuple[WorkflowTask, Task]]]:
    """The task lists of several workflows, in order, with their tasks (one query)."""
    result: dict[int, list[tuple[WorkflowTask, Task]]] = {wid: [] for wid in workflow_ids}
    rows = await session.execute(
        select(WorkflowTask, Task)
        .join(Task, Task.id == WorkflowTask.task_id)
        .where(WorkflowTask.workflow_id.in_(workflow_ids))
        .order_by(WorkflowTask.workflow_id, WorkflowTask.order)
    )
    for wftask, task in rows:
        result[wftask.workflow_id].append((wftask, task))
    return result


async def list_page(
    session: AsyncSession, project_id: int, *, after_id: int, limit: int
) -> Sequence[Workflow]:
    result = await session.execute(
        select(Workflow)
        .where(Workflow.project_id == project_id, Workflow.id > after_id)
        .order_by(Workflow.id)
        .limit(limit)
    )
    return result.scalars().all()


async def insert_task(
    session: AsyncSession, workflow: Workflow, wftask: WorkflowTask, order: int | None
) -> WorkflowTask:
    """Insert at ``order`` (default: the end) and shift the tasks after it."""
    # Serialise inserts into one workflow.
    await session.execute(select(Workflow.id).where(Workflow.id == workflow.id).with_for_update())
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
