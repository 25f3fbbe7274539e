"""The world the tests run in: their own database and NATS streams on the machine's servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

PG_ADMIN_URL = os.environ.get("FRACTAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("FRACTAL_TEST_NATS", "nats://127.0.0.1:4222")
RUN_ID = secrets.token_hex(4)
#: Lifetime of the service tokens that session-scoped fixtures mint once: longer than any run
#: (a slow run of the whole suite outlived the 300 s default).
SESSION_TOKEN_SECONDS = 24 * 3600


async def _admin_exec(sql: str, admin_url: str = PG_ADMIN_URL) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """Create and migrate a database of its own (api and runner schemas) on the server of
    ``admin_url``; returns its URL."""
    asyncio.run(_admin_exec(f'CREATE DATABASE "{name}"', admin_url))
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    from fractal_api.main import MIGRATIONS as API_MIGRATIONS
    from fractal_grpc.migrate import upgrade

    upgrade(API_MIGRATIONS, url, "api")
    try:
        from fractal_runner.main import MIGRATIONS as RUNNER_MIGRATIONS

        upgrade(RUNNER_MIGRATIONS, url, "runner")
    except ImportError:
        pass
    return url


def drop_database(name: str) -> None:
    asyncio.run(_admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def delete_streams_async(prefix: str) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for suffix in ("CMD", "EVT"):
        with contextlib.suppress(Exception):  # the stream may not exist
            await js.delete_stream(f"{prefix.upper()}_{suffix}")
    await nc.close()


def delete_streams(prefix: str) -> None:
    asyncio.run(delete_streams_async(prefix))


async def schema_diff(database_url: str, metadata: MetaData, schema: str) -> list[object]:
    """What Alembic's autogenerate would change to make ``schema`` match ``metadata``: empty
    when the migrations and the models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from fractal_grpc.db import make_engine

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, _: (
                    name == schema if type_ == "schema" else True
                ),
                "compare_type": True,
                "version_table_schema": schema,
            },
        )
        return list(compare_metadata(context, metadata))

    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(diff)
    finally:
        await engine.dispose()


# Where an api of the tests listens: random loopback ports, for both listeners (the public one
# and the internal one of fractal.internal.v1). The one place that decides it.
TEST_API_LISTENERS = {"api_address": "127.0.0.1:0", "api_internal_address": "127.0.0.1:0"}


@dataclass(frozen=True)
class RunningApi:
    """The addresses of a running api: ``address`` serves fractal.v2, ``internal_address``
    fractal.internal.v1 (what the runner's FRACTAL_API_URL points at)."""

    address: str
    internal_address: str


@dataclass(frozen=True)
class RunnerListener:
    """A runner's listener alone (health, reflection, JobFolderService) at ``address``, serving
    the job folders of ``base_dir``."""

    address: str
    base_dir: Path


@asynccontextmanager
async def running_api(service_env: dict[str, str], **overrides: Any) -> AsyncIterator[RunningApi]:
    """An api service in this process on random loopback ports; yields its addresses."""
    from fractal_api.app import ApiApp
    from fractal_grpc.settings import ApiSettings

    env: dict[str, Any] = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(TEST_API_LISTENERS, grace_seconds=0.5, **overrides)
    app = ApiApp(ApiSettings(**env))
    port = await app.start()
    try:
        yield RunningApi(f"127.0.0.1:{port}", f"127.0.0.1:{app.internal_port}")
    finally:
        await app.stop()
