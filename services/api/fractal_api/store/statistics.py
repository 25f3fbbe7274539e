"""The planner's statistics of the images table, refreshed after large image writes."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

log = logging.getLogger("fractal.api")

#: At most one ANALYZE per this many seconds.
ANALYZE_INTERVAL = 10.0
#: Image writes of at least this many rows refresh the statistics.
BULK_ROWS = 10_000


class ImageStatistics:
    """Refreshes ``api.images``' statistics in the background after a bulk write, at most once
    per ``ANALYZE_INTERVAL`` (autovacuum would, but only a minute or more later, and until then
    a query plan can assume the new rows do not exist)."""

    def __init__(self) -> None:
        #: The raw pool (set when the api starts); nothing is analysed without it.
        self.pool: asyncpg.Pool | None = None
        self._last = -ANALYZE_INTERVAL
        self._background: set[asyncio.Task[None]] = set()

    def rows_written(self, count: int) -> None:
        """Call after committing ``count`` new or replaced image rows."""
        now = time.monotonic()
        if count < BULK_ROWS or self.pool is None or now - self._last < ANALYZE_INTERVAL:
            return
        self._last = now
        task = asyncio.create_task(self._analyze(self.pool))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _analyze(pool: asyncpg.Pool) -> None:
        try:
            await pool.execute("ANALYZE api.images")
        except Exception:  # noqa: BLE001 - statistics are an optimisation
            log.warning("ANALYZE api.images failed", exc_info=True)
