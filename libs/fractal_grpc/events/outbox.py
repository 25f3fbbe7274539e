"""The transactional outbox: commands and events are rows written in the same transaction as
the state change; a relay publishes them to JetStream (``Nats-Msg-Id`` = the row's identity,
so a re-publish after a crash is deduplicated) and marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from google.protobuf.message import Message
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import transaction
from fractal_grpc.events.bus import EventBus
from fractal_grpc.grpckit.tracing import Tracing

if TYPE_CHECKING:
    from fractal_grpc.grpckit.metrics import ServiceMetrics

log = logging.getLogger("fractal.outbox")


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("subject", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        # The trace context (traceparent/tracestate as JSON) of the writing transaction.
        Column("trace_context", Text, nullable=True),
        Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL")),
    )


async def add_to_outbox(
    session: AsyncSession, table: Table, subject: str, message: Message
) -> None:
    """Record ``message`` for ``subject`` in the caller's transaction, with the current trace
    context (when tracing is on and a span is current)."""
    carrier = Tracing.carrier()
    await session.execute(
        insert(table).values(
            subject=subject,
            payload=message.SerializeToString(),
            trace_context=json.dumps(carrier) if carrier else None,
        )
    )


class OutboxRelay:
    """Publishes unsent outbox rows. ``notify()`` after a commit publishes at once; a periodic
    sweep catches rows left by another process or a crash. Safe with several replicas
    (``FOR UPDATE SKIP LOCKED``).

    With ``metrics``: rows published and their lag from commit to publication, and at each
    sweep (every ``poll_seconds``) the unsent rows and the age of the oldest one."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        table: Table,
        bus: EventBus,
        *,
        poll_seconds: float = 1.0,
        keep_sent: timedelta = timedelta(hours=1),
        batch: int = 200,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._last_gauge = 0.0
        self.sessions = sessions
        self.table = table
        self.bus = bus
        self.poll_seconds = poll_seconds
        self.keep_sent = keep_sent
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = datetime.now(UTC)

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Last flush so nothing committed waits for the next start.
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            try:
                await self.flush()
                await self._measure()
                await self._purge()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retried at the next wake-up
                log.warning("outbox relay failed; retrying", exc_info=True)
                await asyncio.sleep(self.poll_seconds)

    async def flush(self) -> int:
        """Publish every unsent row; returns how many were sent."""
        sent = 0
        while True:
            count = await self._flush_batch()
            sent += count
            if count < self.batch:
                return sent

    async def _flush_batch(self) -> int:
        t = self.table
        async with transaction(self.sessions) as session:
            rows = (
                await session.execute(
                    select(t.c.id, t.c.subject, t.c.payload, t.c.created_at, t.c.trace_context)
                    .where(t.c.sent_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                msg_id = f"{row.id}-{int(row.created_at.timestamp() * 1e6)}"
                await self.bus.publish(
                    row.subject,
                    bytes(row.payload),
                    msg_id=msg_id,
                    headers=_trace_headers(row.trace_context),
                )
            if rows:
                await session.execute(
                    update(t).where(t.c.id.in_([r.id for r in rows])).values(sent_at=func.now())
                )
        if rows and self.metrics is not None:
            now = datetime.now(UTC)
            self.metrics.outbox_published.inc(len(rows))
            for row in rows:
                self.metrics.outbox_lag.observe(max(0.0, (now - row.created_at).total_seconds()))
        return len(rows)

    async def _measure(self) -> None:
        """The unsent rows and the oldest one's age, at most once per ``poll_seconds``."""
        if self.metrics is None or time.monotonic() - self._last_gauge < self.poll_seconds:
            return
        self._last_gauge = time.monotonic()
        t = self.table
        async with self.sessions() as session:
            count, oldest, now = (
                await session.execute(
                    select(func.count(), func.min(t.c.created_at), func.now()).where(
                        t.c.sent_at.is_(None)
                    )
                )
            ).one()
        self.metrics.outbox_unsent.set(count)
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.outbox_oldest_unsent.set(max(0.0, age))

    async def _purge(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_purge < timedelta(minutes=5):
            return
        self._last_purge = now
        t = self.table
        async with transaction(self.sessions) as session:
            await session.execute(delete(t).where(t.c.sent_at < now - self.keep_sent))


def _trace_headers(stored: str | None) -> dict[str, str] | None:
    if not stored:
        return None
    try:
        value = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}
