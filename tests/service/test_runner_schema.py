"""The runner schema: migrations agree with the models, and run bookkeeping is idempotent."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import make_engine, make_sessionmaker, transaction
from fractal_runner.jobs import RunStore
from fractal_runner.models import Base, Run, RunStatus


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, _: name == "runner" if type_ == "schema" else True,
            "compare_type": True,
            "version_table_schema": "runner",
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_models(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []


def _job_id() -> int:
    return 10**12 + secrets.randbelow(10**9)


async def test_run_bookkeeping(sessions: async_sessionmaker[AsyncSession]) -> None:
    store = RunStore(sessions)
    job_id = _job_id()
    assert await store.add(job_id) is True
    assert await store.add(job_id) is False  # a redelivered submit changes nothing
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.QUEUED and run.attempts == 0
    assert job_id in await store.unfinished()

    assert await store.start_attempt(job_id) == 1
    assert await store.start_attempt(job_id) == 2
    await store.record_error(job_id, "boom")
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.RUNNING and run.last_error == "boom"

    await store.finish(job_id)
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.FINISHED
    assert job_id not in await store.unfinished()
    await store.finish(_job_id())  # unknown run: no-op

    other = _job_id()
    assert await store.start_attempt(other) == 1  # recorded on the fly when missing
    async with transaction(sessions) as session:
        await session.execute(delete(Run).where(Run.job_id.in_([job_id, other])))
