"""The api schema: the migrations and the models agree (nothing for autogenerate to add)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from fractal_api.models import Base
from fractal_grpc.db import make_engine


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, _: name == "api" if type_ == "schema" else True,
            "compare_type": True,
            "version_table_schema": "api",
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def test_api_migrations_match_models(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []
