"""What every servicer of the api needs: settings, sessions, token signer, outbox relay."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.auth.principal import PrincipalCache
from fractal_grpc.auth.tokens import TokenSigner
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.events.outbox import OutboxRelay
from fractal_grpc.settings import ApiSettings

log = logging.getLogger("fractal.api")

ANALYZE_INTERVAL = 10.0
# Image writes of at least this many rows refresh the statistics.
BULK_ROWS = 10_000


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
    _last_analyze: float = field(default=-ANALYZE_INTERVAL)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def raw(self) -> asyncpg.Pool:
        assert self.pg is not None, "the api is not started"
        return self.pg

    def images_bulk_written(self) -> None:
        """After a large image write: refresh the planner's statistics in the background, at
        most once per ``ANALYZE_INTERVAL`` (autovacuum would, but only a minute or more later,
        and until then a query plan can assume the new rows do not exist)."""
        now = time.monotonic()
        if self.pg is None or now - self._last_analyze < ANALYZE_INTERVAL:
            return
        self._last_analyze = now
        task = asyncio.create_task(self._analyze_images())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _analyze_images(self) -> None:
        try:
            await self.raw.execute("ANALYZE api.images")
        except Exception:  # noqa: BLE001 - statistics are an optimisation
            log.warning("ANALYZE api.images failed", exc_info=True)

    def outbox_written(self) -> None:
        """Call after committing outbox rows: the relay publishes them at once."""
        if self.relay is not None:
            self.relay.notify()
