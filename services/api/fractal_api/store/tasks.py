"""The task catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, ColumnElement, any_, bindparam, delete, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Task
from fractal_api.store import RawStatement, write_unique
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


async def list_page(
    pg: asyncpg.Pool,
    *,
    after_id: int,
    limit: int,
    schema_parallel: bool = True,
    schema_non_parallel: bool = True,
) -> list[asyncpg.Record]:
    """A page of the catalogue by id, as records of the raw pool; each args schema only when
    asked for (left out, its column is not in the records)."""
    statement = _list_statement(schema_parallel, schema_non_parallel)
    return await statement.fetch(pg, after_id=after_id, limit=limit)


def _columns(schema_parallel: bool, schema_non_parallel: bool) -> list[ColumnElement[Any]]:
    left_out = {
        name
        for name, wanted in (
            ("args_schema_parallel", schema_parallel),
            ("args_schema_non_parallel", schema_non_parallel),
        )
        if not wanted
    }
    return [c for c in Task.__table__.c if c.name not in left_out]


@lru_cache(maxsize=4)
def _list_statement(schema_parallel: bool, schema_non_parallel: bool) -> RawStatement:
    return RawStatement.of(
        select(*_columns(schema_parallel, schema_non_parallel))
        .where(Task.id > bindparam("after_id"))
        .order_by(Task.id)
        .limit(bindparam("limit"))
    )


@lru_cache(maxsize=2)
def tasks_by_id(with_schemas: bool) -> RawStatement:
    """The tasks whose id is in ``task_ids``; their args schemas only ``with_schemas``."""
    return RawStatement.of(
        select(*_columns(with_schemas, with_schemas)).where(
            Task.id == any_(bindparam("task_ids", type_=ARRAY(BigInteger)))
        )
    )


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
