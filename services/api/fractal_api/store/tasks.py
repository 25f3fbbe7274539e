"""The task catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Task
from fractal_api.store import write_unique
from fractal_grpc.grpckit.errors import NotFound


def task_type(command_non_parallel: str | None, command_parallel: str | None) -> str:
    """Reference rule: the type follows from which commands a task has."""
    if command_non_parallel and command_parallel:
        return "compound"
    return "parallel" if command_parallel else "non_parallel"


def schema_defaults(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The ``default`` of every top-level property that has a non-null one ({} if malformed)."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {
        key: prop["default"]
        for key, prop in properties.items()
        if isinstance(prop, dict) and prop.get("default") is not None
    }


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
