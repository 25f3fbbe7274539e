"""The fuzzed world's shapes, importable by the fuzz tests (a module of its own, not the
conftest: several test folders have a conftest, and only one of them can be ``conftest``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from rpcs import Rpc

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Principal:
    name: str
    metadata: Metadata
    # Real ids for the id fields of a request (``project_id`` …), so a request gets past the
    # lookups to the checks behind them.
    ids: dict[str, int] = field(default_factory=dict)


@dataclass
class FuzzWorld:
    rpcs: list[Rpc]
    principals: list[Principal]
    db: asyncpg.Connection
    count_sql: str

    async def row_counts(self) -> tuple[int, ...]:
        """The number of rows of every api table (but the outbox, which the relay drains)."""
        return tuple(await self.db.fetchrow(self.count_sql))
