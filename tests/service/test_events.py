"""The outbox relay and the JetStream consumers, against the real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import MetaData, func, select, text

from fractal.events.v1 import job_events_pb2
from fractal_grpc.db import make_engine, make_sessionmaker, transaction
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.events.outbox import OutboxRelay, add_to_outbox, outbox_table
from world import NATS_URL, delete_streams_async


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    prefix = f"ev{secrets.token_hex(4)}"
    bus = await EventBus.connect(NATS_URL, Subjects(prefix), name="test-events")
    yield bus
    await bus.close()
    await delete_streams_async(prefix)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[tuple[object, object]]:
    """An outbox table in a throw-away schema of the test database."""
    schema = f"outbox_{secrets.token_hex(4)}"
    metadata = MetaData(schema=schema)
    table = outbox_table(metadata)
    engine = make_engine(database_url, pool_size=2)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(metadata.create_all)
    yield make_sessionmaker(engine), table
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


async def test_relay_publishes_committed_rows_once(bus: EventBus, outbox: tuple) -> None:
    sessions, table = outbox
    subject = bus.subjects.job_submit
    async with transaction(sessions) as session:
        for job_id in (1, 2, 3):
            await add_to_outbox(session, table, subject, job_events_pb2.JobSubmitted(job_id=job_id))
    # A rolled-back transaction leaves nothing to publish.
    with pytest.raises(RuntimeError):
        async with transaction(sessions) as session:
            await add_to_outbox(session, table, subject, job_events_pb2.JobSubmitted(job_id=99))
            raise RuntimeError("abort")
    relay = OutboxRelay(sessions, table, bus)
    assert await relay.flush() == 3
    assert await relay.flush() == 0
    async with sessions() as session:
        unsent = await session.scalar(
            select(func.count()).select_from(table).where(table.c.sent_at.is_(None))
        )
    assert unsent == 0
    info = await bus.js.stream_info(bus.subjects.command_stream)
    assert info.state.messages == 3

    # A crash between publishing and marking rows sent re-publishes them: JetStream drops the
    # duplicates by their Nats-Msg-Id.
    async with transaction(sessions) as session:
        await session.execute(table.update().values(sent_at=None))
    assert await relay.flush() == 3
    info = await bus.js.stream_info(bus.subjects.command_stream)
    assert info.state.messages == 3


async def test_consumer_acks_after_work_and_redelivers_failures(bus: EventBus) -> None:
    subject = bus.subjects.job_submit
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(data: bytes) -> None:
        job_id = job_events_pb2.JobSubmitted.FromString(data).job_id
        seen.append(job_id)
        if job_id == 2 and seen.count(2) == 1:
            raise RuntimeError("transient failure")
        if {1, 2, 3} <= set(seen) and seen.count(2) == 2:
            done.set()

    for job_id in (1, 2, 3):
        await bus.publish(subject, job_events_pb2.JobSubmitted(job_id=job_id).SerializeToString())
    bus.consume(subject, "test-consumer", handler)
    await asyncio.wait_for(done.wait(), 20)
    assert seen.count(2) == 2 and seen.count(1) == 1 and seen.count(3) == 1
    # Everything acked: the work queue is empty.
    for _ in range(50):
        info = await bus.js.stream_info(bus.subjects.command_stream)
        if info.state.messages == 0:
            break
        await asyncio.sleep(0.1)
    assert info.state.messages == 0


async def test_commands_wait_for_a_consumer_that_starts_later(bus: EventBus) -> None:
    subject = bus.subjects.job_stop
    await bus.publish(subject, job_events_pb2.JobStopRequested(job_id=7).SerializeToString())
    got: asyncio.Queue[int] = asyncio.Queue()

    async def handler(data: bytes) -> None:
        await got.put(job_events_pb2.JobStopRequested.FromString(data).job_id)

    bus.consume(subject, "late-consumer", handler)
    assert await asyncio.wait_for(got.get(), 20) == 7
