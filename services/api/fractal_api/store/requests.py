"""Idempotency keys (AIP-155): a create retried with one request_id returns the first result."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import RequestRecord
from fractal_grpc.grpckit.errors import invalid_field


async def replay(session: AsyncSession, user_id: int, method: str, request_id: str) -> int | None:
    """The id created by an earlier call with this request_id, if any."""
    if not request_id:
        return None
    if len(request_id) > 128:
        raise invalid_field("request_id", "must have at most 128 characters")
    return await session.scalar(
        select(RequestRecord.resource_id).where(
            RequestRecord.user_id == user_id,
            RequestRecord.method == method,
            RequestRecord.request_id == request_id,
        )
    )


async def remember(
    session: AsyncSession, user_id: int, method: str, request_id: str, resource_id: int
) -> None:
    if not request_id:
        return
    await session.execute(
        insert(RequestRecord)
        .values(user_id=user_id, method=method, request_id=request_id, resource_id=resource_id)
        .on_conflict_do_nothing()
    )
