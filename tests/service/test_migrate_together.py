"""Several processes migrating one new database at once (replicas that start together, or beside
the migration Job of deploy/k8s) all succeed: migrations of a schema take turns."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from alembic.script import ScriptDirectory

from fractal_api.main import MIGRATIONS as API_MIGRATIONS
from fractal_grpc.migrate import alembic_config
from fractal_runner.main import MIGRATIONS as RUNNER_MIGRATIONS
from world import PG_ADMIN_URL, RUN_ID, _admin_exec, drop_database

PROCESSES_PER_SERVICE = 3


def _head(migrations: Path, url: str, schema: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(migrations, url, schema)).get_current_head()


async def _versions(url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(url)
    try:
        api = await conn.fetchval("SELECT version_num FROM api.alembic_version")
        runner = await conn.fetchval("SELECT version_num FROM runner.alembic_version")
    finally:
        await conn.close()
    return api, runner


def test_concurrent_migrations_of_a_new_database_all_succeed() -> None:
    name = f"fractal_test_{RUN_ID}_migrate_together"
    asyncio.run(_admin_exec(f'CREATE DATABASE "{name}"'))
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    env = {**os.environ, "FRACTAL_DATABASE_URL": url}
    try:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", module, "migrate"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for module in ["fractal_api.main", "fractal_runner.main"] * PROCESSES_PER_SERVICE
        ]
        outcomes = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in processes]
        versions = asyncio.run(_versions(url))
    finally:
        drop_database(name)
    failed = [err for code, err in outcomes if code != 0]
    assert not failed, failed[0]
    assert versions == (
        _head(API_MIGRATIONS, url, "api"),
        _head(RUNNER_MIGRATIONS, url, "runner"),
    )
