"""The task catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.sql.base import ExecutableOption

from fractal_api.models import Task
from fractal_api.store import write_unique
from fractal_grpc.grpckit.errors import NotFound


async def get(session: AsyncSession, task_id: int, *, lock: str | None = None) -> Task:
    """The task (NOT_FOUND if missing). ``lock="share"`` keeps it from being deleted until the
    transaction ends (a workflow task about to use it); ``lock="update"`` before a change."""
    query = select(Task).where(Task.id == task_id)
    if lock == "share":
        query = query.with_for_update(key_share=True, read=True)
    elif lock == "update":
        query = query.with_for_update()
    task = (await session.execute(query)).scalar_one_or_none()
    if task is None:
        raise NotFound(f"Task {task_id} not found", metadata={"task_id": str(task_id)})
    return task


async def create(session: AsyncSession, **fields: Any) -> Task:
    task = Task(**fields)
    await write_unique(session, task)
    return task


def without_schemas(*, parallel: bool = True, non_parallel: bool = True) -> list[ExecutableOption]:
    """Loader options leaving a task's args schemas (each can be large) out of the SELECT; a
    later read of a left-out one raises instead of loading it."""
    options: list[ExecutableOption] = []
    if parallel:
        options.append(defer(Task.args_schema_parallel, raiseload=True))
    if non_parallel:
        options.append(defer(Task.args_schema_non_parallel, raiseload=True))
    return options


async def list_page(
    session: AsyncSession,
    *,
    after_id: int,
    limit: int,
    schema_parallel: bool = True,
    schema_non_parallel: bool = True,
) -> Sequence[Task]:
    """A page of the catalogue by id; each args schema only when asked for."""
    result = await session.execute(
        select(Task)
        .where(Task.id > after_id)
        .order_by(Task.id)
        .limit(limit)
        .options(
            *without_schemas(parallel=not schema_parallel, non_parallel=not schema_non_parallel)
        )
    )
    return result.scalars().all()


async def delete_task(session: AsyncSession, task_id: int) -> None:
    await session.execute(delete(Task).where(Task.id == task_id))


async def by_sources(session: AsyncSession, sources: Sequence[str]) -> list[Task]:
    """The tasks whose source is one of ``sources``, kept from deletion until the transaction
    ends (a workflow import is about to use them)."""
    result = await session.execute(
        select(Task)
        .where(Task.source.in_(set(sources)))
        .order_by(Task.id)
        .with_for_update(key_share=True, read=True)
    )
    return list(result.scalars().all())
