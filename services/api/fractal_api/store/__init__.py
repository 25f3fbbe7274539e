"""Repository functions: all database access of the api service lives here."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Base
from fractal_grpc.grpckit.errors import DomainError


async def insert_unique(session: AsyncSession, row: Base, conflict: DomainError) -> None:
    """Insert ``row``; a unique-constraint violation becomes ``conflict``. The database decides,
    so two concurrent creates cannot both pass a check made before the insert. The rest of the
    transaction stays usable (the insert runs in a savepoint). Build ``conflict`` before the
    call: a failed savepoint expires the session's loaded rows."""
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise conflict from None
    await session.refresh(row)
