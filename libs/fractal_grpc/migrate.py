"""Alembic, one migration history per schema, driven from code (no alembic.ini)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def alembic_config(script_location: Path, database_url: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["schema"] = schema
    return config


def upgrade(script_location: Path, database_url: str, schema: str, revision: str = "head") -> None:
    """Apply the migrations of ``schema`` up to ``revision`` (blocking; call from a thread or
    at start-up)."""
    command.upgrade(alembic_config(script_location, database_url, schema), revision)


def lock_key(schema: str) -> int:
    """The advisory lock key (a signed 64-bit integer) that serialises migrations of ``schema``."""
    digest = hashlib.sha256(f"fractal-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def run_env(context: EnvironmentContext, metadata: MetaData) -> None:
    """The body of each service's ``env.py``: online migrations through asyncpg."""
    config = context.config
    schema = config.attributes["schema"]
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        return name == schema if type_ == "schema" else True

    def do_run(connection: Connection) -> None:
        # One migration of a schema at a time: replicas that start together on a new database
        # (or beside the migration Job) wait here instead of racing to create the schema. The
        # lock is the transaction's, released when it commits.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(schema)})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(main())
