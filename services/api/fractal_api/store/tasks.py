"""The task catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Task
from fractal_api.store import write_unique
from fractal_grpc.grpckit.errors import NotFound


async def get(session: AsyncSession, task_id: int) -> Task:
    task = await session.get(Task, task_id)
    if task is None:
        raise NotFound(f"Task {task_id} not found", metadata={"task_id": str(task_id)})
    return task


async def create(session: AsyncSession, **fields: Any) -> Task:
    task = Task(**fields)
    await write_unique(session, task)
    return task


async def list_page(session: AsyncSession, *, after_id: int, limit: int) -> Sequence[Task]:
    result = await session.execute(
        select(Task).where(Task.id > after_id).order_by(Task.id).limit(limit)
    )
    return result.scalars().all()
