"""Repository functions: all database access of the api service lives here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, any_, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Base
from fractal_api.store.conflicts import conflict, violated_constraint


async def write_unique(session: AsyncSession, row: Base) -> None:
    """Insert or update ``row``; a violated unique rule becomes its client error (see
    ``conflicts.RULES``). The database decides, so two concurrent writes cannot both pass a check
    made before them. The rest of the transaction stays usable (the write runs in a savepoint)."""
    # The values for the message, read now: a failed savepoint expires the session's rows.
    values = dict(vars(row))
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        error = conflict(violated_constraint(exc), values)
        if error is None:
            raise
        raise error from None
    await session.refresh(row)


def any_of(ids: Select[Any]) -> ColumnElement[Any]:
    """``= ANY(ARRAY(ids))`` for a query of a few ids (a page's): PostgreSQL computes the array
    once and looks each id up by key. ``IN (ids)`` or a join with it may instead be planned as a
    hash against a scan of the whole table, whose cost then grows with the table."""
    return any_(func.array(ids.scalar_subquery()))
