"""What every servicer of the api needs: settings, sessions, pools, token signer, events."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_api.store.statistics import ImageStatistics
from fractal_grpc.auth.principal import PrincipalCache
from fractal_grpc.auth.tokens import TokenSigner
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.events.outbox import OutboxRelay
from fractal_grpc.settings import ApiSettings


@dataclass
class ApiContext:
    settings: ApiSettings
    sessions: async_sessionmaker[AsyncSession]
    reads: async_sessionmaker[AsyncSession]
    # The raw pool for hot reads (set at start).
    pg: asyncpg.Pool | None
    principals: PrincipalCache
    signer: TokenSigner
    subjects: Subjects
    bus: EventBus | None = None
    relay: OutboxRelay | None = field(default=None)
    statistics: ImageStatistics = field(default_factory=ImageStatistics)

    @property
    def raw(self) -> asyncpg.Pool:
        assert self.pg is not None, "the api is not started"
        return self.pg

    def outbox_written(self) -> None:
        """Call after committing outbox rows: the relay publishes them at once."""
        if self.relay is not None:
            self.relay.notify()
