"""The runner schema: migrations agree with the models, run bookkeeping is idempotent, and leases
on runs give each run to one runner instance at a time."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import psutil
import pytest
from sqlalchemy import delete, func, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import make_engine, make_sessionmaker, transaction
from fractal_runner.leases import Instance, LeaseConfig
from fractal_runner.models import Base, Run, RunStatus
from fractal_runner.run_store import RunStore
from world import schema_diff


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def test_migrations_match_models(database_url: str) -> None:
    assert await schema_diff(database_url, Base.metadata, "runner") == []


def _job_id() -> int:
    return 10**12 + secrets.randbelow(10**9)


async def test_run_bookkeeping(sessions: async_sessionmaker[AsyncSession]) -> None:
    store = RunStore(sessions)
    job_id = _job_id()
    assert await store.claim(job_id, create=True) is True
    assert await store.claim(job_id, create=True) is True  # a redelivered submit: still ours
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.QUEUED and run.attempts == 0
    assert run.owner == store.owner and run.lease_expires_at is not None
    assert job_id in await store.unfinished()

    assert await store.start_attempt(job_id) == 1
    assert await store.start_attempt(job_id) == 2
    await store.record_error(job_id, "boom")
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.RUNNING and run.last_error == "boom"

    await store.finish(job_id)
    run = await store.get(job_id)
    assert run is not None and run.status == RunStatus.FINISHED
    assert run.owner == store.owner and run.lease_expires_at is None  # keeps its owner only
    assert job_id not in await store.unfinished()
    assert await store.claim(job_id, create=True) is False  # a finished run is never claimed
    assert await store.start_attempt(job_id) is None
    await store.finish(_job_id())  # unknown run: no-op
    assert await store.claim(_job_id()) is False  # unknown run, not created

    other = _job_id()
    assert await store.start_attempt(other) == 1  # recorded on the fly when missing
    async with transaction(sessions) as session:
        await session.execute(delete(Run).where(Run.job_id.in_([job_id, other])))


# --- leases between runner instances ------------------------------------------------------


@pytest.fixture
async def own_schema(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The runner tables in a schema of their own: the session's runner (which sweeps the
    real ``runner`` schema for orphaned runs) never sees these runs."""
    schema = f"runner_t{secrets.token_hex(4)}"
    engine = make_engine(database_url, pool_size=2)
    translated = engine.execution_options(schema_translate_map={"runner": schema})
    async with translated.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield make_sessionmaker(translated)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


def _store(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    *,
    process: str | None = None,
    host: str | None = None,
) -> RunStore:
    instance = Instance(owner=f"{name}-{secrets.token_hex(2)}", process=process, host=host)
    return RunStore(sessions, instance=instance, lease=LeaseConfig.of(60))


async def _expire(sessions: async_sessionmaker[AsyncSession], job_id: int) -> None:
    async with transaction(sessions) as session:
        await session.execute(
            update(Run)
            .where(Run.job_id == job_id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )


async def _lease(store: RunStore, job_id: int) -> tuple[str | None, datetime | None]:
    run = await store.get(job_id)
    assert run is not None
    return run.owner, run.lease_expires_at


async def test_claims_between_two_owners(own_schema: async_sessionmaker[AsyncSession]) -> None:
    a, b = _store(own_schema, "a"), _store(own_schema, "b")
    job_id = _job_id()
    assert await a.claim(job_id, create=True)
    owner, first_expiry = await _lease(a, job_id)
    assert owner == a.owner and first_expiry is not None

    # A live lease is not stolen, by a submit, a claim, an attempt or a sweep.
    assert not await b.claim(job_id, create=True)
    assert not await b.claim(job_id)
    assert await b.start_attempt(job_id) is None
    claimed, next_expiry = await b.claim_orphans()
    assert claimed == []
    assert next_expiry is not None and 55 < next_expiry <= 60
    assert (await _lease(a, job_id))[0] == a.owner

    # Renewal extends it.
    assert await a.renew([job_id]) == ({job_id}, set())
    owner, renewed_expiry = await _lease(a, job_id)
    assert owner == a.owner and renewed_expiry is not None and renewed_expiry > first_expiry
    assert await a.start_attempt(job_id) == 1

    # An expired one is claimed (here by a sweep); the old owner learns it lost the run.
    await _expire(own_schema, job_id)
    claimed, next_expiry = await b.claim_orphans()
    assert claimed == [job_id] and next_expiry is None  # no lease of another owner left
    assert (await _lease(a, job_id))[0] == b.owner
    assert await a.renew([job_id]) == (set(), {job_id})
    assert not await a.claim(job_id)
    assert await b.start_attempt(job_id) == 2  # b resumes: one more attempt

    # Release frees it at once, for anyone.
    other = _job_id()
    assert await b.claim(other, create=True)
    assert await b.release() == sorted([job_id, other])
    assert await _lease(b, job_id) == (None, None)
    assert await a.claim(job_id)
    claimed, _ = await a.claim_orphans()
    assert claimed == [other]

    # A finished run needs no lease: it is not renewed, claimed nor lost.
    await a.finish(job_id)
    assert await _lease(a, job_id) == (a.owner, None)
    assert await a.renew([job_id]) == (set(), set())
    await _expire(own_schema, other)
    claimed, _ = await b.claim_orphans()
    assert claimed == [other]
    assert not await b.claim(job_id)


async def test_concurrent_claims_have_one_winner(
    own_schema: async_sessionmaker[AsyncSession],
) -> None:
    stores = [_store(own_schema, f"r{i}") for i in range(4)]
    job_ids = [_job_id() for _ in range(5)]
    results = await asyncio.gather(*(s.claim(job_ids[0], create=True) for s in stores))
    assert sorted(results) == [False, False, False, True]
    for job_id in job_ids[1:]:
        assert await stores[0].claim(job_id, create=True)
    # Every store releases what it holds (the first run went to whichever won the race).
    released = [await s.release() for s in stores]
    assert sorted(j for ids in released for j in ids) == sorted(job_ids)
    swept = await asyncio.gather(*(s.claim_orphans() for s in stores))
    claimed = [job_id for ids, _ in swept for job_id in ids]
    assert sorted(claimed) == sorted(job_ids)  # each released run went to exactly one


async def test_sweep_takes_runs_of_a_gone_process_of_this_host_at_once(
    own_schema: async_sessionmaker[AsyncSession],
) -> None:
    me = Instance.current()
    if me.host is None or me.process is None:
        pytest.skip("no /proc: the same-host shortcut is off")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    gone_key = f"{me.host}/{proc.pid}/{psutil.Process(proc.pid).create_time():.2f}"
    proc.kill()
    await proc.wait()
    gone = _store(own_schema, "gone", process=gone_key, host=me.host)
    alive = _store(own_schema, "alive", process=me.process, host=me.host)  # this very process
    elsewhere = _store(own_schema, "elsewhere", process=f"other-boot/1/{proc.pid}/1.00")
    mine = RunStore(own_schema, instance=me, lease=LeaseConfig.of(60))
    assert me.process_is_gone(gone_key) and not me.process_is_gone(me.process)
    assert not me.process_is_gone(f"other-boot/1/{proc.pid}/1.00")

    runs = {}
    for store in (gone, alive, elsewhere):
        runs[store.owner] = _job_id()
        assert await store.claim(runs[store.owner], create=True)
    assert not await mine.claim(runs[gone.owner])  # a single claim waits for the lease
    claimed, _ = await mine.claim_orphans()
    assert claimed == [runs[gone.owner]]
    assert (await _lease(mine, runs[gone.owner]))[0] == mine.owner
