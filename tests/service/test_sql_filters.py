"""Filter semantics, SQL side: every shared filter case against a real PostgreSQL.

A fresh database ``fractal_filtertest_<hex>`` is created for this module and dropped at the end.
The server is taken from ``FRACTAL_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; the database part names the maintenance
database used to create and drop the test one).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

import asyncio  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.dialects.postgresql import JSONB  # noqa: E402
from sqlalchemy.engine import URL, make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402
from sqlalchemy.ext.compiler import compiles  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from filter_cases import FILTER_CASES, FilterCase, image  # noqa: E402
from fractal_grpc.images.sql_filters import image_filter_clause  # noqa: E402

ADMIN_URL = os.environ.get("FRACTAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

metadata = sa.MetaData()
images_table = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("case_name", sa.Text, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("zarr_url", sa.Text, nullable=False),
    sa.Column("attributes", JSONB, nullable=False),
    sa.Column("types", JSONB, nullable=False),
    sa.UniqueConstraint("case_name", "zarr_url"),
    sa.Index(
        "ix_images_attributes",
        "attributes",
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
    ),
    sa.Index(
        "ix_images_types",
        "types",
        postgresql_using="gin",
        postgresql_ops={"types": "jsonb_path_ops"},
    ),
)


def _asyncpg_url(url: str, database: str | None = None) -> URL:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    return parsed if database is None else parsed.set(database=database)


def _engine(url: URL, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool, **kwargs)


async def _create_database(name: str) -> None:
    engine = _engine(_asyncpg_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def _drop_database(name: str) -> None:
    engine = _engine(_asyncpg_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def _create_schema(url: URL) -> None:
    engine = _engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def filtertest_db_url(request: pytest.FixtureRequest) -> Iterator[URL]:
    """A fresh database with the images table, dropped when the module is done."""
    name = f"fractal_filtertest_{secrets.token_hex(6)}"
    asyncio.run(_create_database(name))
    request.addfinalizer(lambda: asyncio.run(_drop_database(name)))
    url = _asyncpg_url(ADMIN_URL, database=name)
    asyncio.run(_create_schema(url))
    yield url


async def _select_matching(url: URL, case: FilterCase) -> list[str]:
    engine = _engine(url)
    try:
        async with engine.begin() as connection:
            if case.images:
                await connection.execute(
                    images_table.insert(),
                    [
                        {
                            "case_name": case.name,
                            "position": position,
                            "zarr_url": img["zarr_url"],
                            "attributes": img["attributes"],
                            "types": img["types"],
                        }
                        for position, img in enumerate(case.images)
                    ],
                )
            clause = image_filter_clause(
                images_table.c.attributes,
                images_table.c.types,
                case.attribute_filters,
                case.type_filters,
            )
            result = await connection.execute(
                sa.select(images_table.c.zarr_url)
                .where(images_table.c.case_name == case.name, clause)
                .order_by(images_table.c.position)
            )
            return list(result.scalars())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_sql_filter_case(filtertest_db_url: URL, case: FilterCase) -> None:
    assert asyncio.run(_select_matching(filtertest_db_url, case)) == case.expected


async def _jsonb_checks(url: URL) -> dict[str, bool]:
    engine = _engine(url)
    try:
        async with engine.connect() as connection:
            row = await connection.execute(
                sa.text(
                    "SELECT '{\"a\": 1}'::jsonb @> '{\"a\": 1.0}'::jsonb AS int_contains_float,"
                    " '{\"a\": 1.0}'::jsonb @> '{\"a\": 1}'::jsonb AS float_contains_int,"
                    " '{\"a\": true}'::jsonb @> '{\"a\": 1}'::jsonb AS true_contains_one,"
                    " '{\"a\": 1}'::jsonb @> '{\"a\": true}'::jsonb AS one_contains_true,"
                    ' \'{"a": "1"}\'::jsonb @> \'{"a": 1}\'::jsonb AS str_contains_int'
                )
            )
            return dict(row.mappings().one())
    finally:
        await engine.dispose()


def test_jsonb_numeric_equality_ignores_int_vs_float_but_not_bool(filtertest_db_url: URL) -> None:
    assert asyncio.run(_jsonb_checks(filtertest_db_url)) == {
        "int_contains_float": True,
        "float_contains_int": True,
        "true_contains_one": False,
        "one_contains_true": False,
        "str_contains_int": False,
    }


class _Explain(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """``EXPLAIN <select>``, compiled with the select's own bound parameters."""

    inherit_cache = False

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + str(compiler.process(element.statement, **kw))


async def _explain(
    url: URL, attribute_filters: dict[str, Any], type_filters: dict[str, bool]
) -> str:
    engine = _engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                images_table.insert(),
                [
                    {
                        "case_name": "explain",
                        "position": index,
                        "zarr_url": f"/zarr/explain/{index}",
                        "attributes": {"well": f"A{index % 12:02d}", "n": index},
                        "types": {"3D": index % 2 == 0},
                    }
                    for index in range(500)
                ],
            )
            await connection.execute(sa.text("ANALYZE images"))
            await connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
            clause = image_filter_clause(
                images_table.c.attributes, images_table.c.types, attribute_filters, type_filters
            )
            statement = sa.select(images_table.c.zarr_url).where(clause)
            result = await connection.execute(_Explain(statement))
            plan = "\n".join(str(line) for line in result.scalars())
            await connection.rollback()
            return plan
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("attribute_filters", "type_filters", "index_name"),
    [
        ({"well": "A03"}, {}, "ix_images_attributes"),
        ({"well": "A03", "n": 3}, {}, "ix_images_attributes"),
        ({}, {"3D": True}, "ix_images_types"),
    ],
)
def test_gin_index_serves_the_clause(
    filtertest_db_url: URL,
    attribute_filters: dict[str, Any],
    type_filters: dict[str, bool],
    index_name: str,
) -> None:
    plan = asyncio.run(_explain(filtertest_db_url, attribute_filters, type_filters))
    assert index_name in plan, plan


def test_image_helper_is_storable() -> None:
    # The helper used by the case table gives plain JSON-ready dicts.
    assert image("x", {"a": 1}, {"t": True}) == {
        "zarr_url": "/zarr/x",
        "origin": None,
        "attributes": {"a": 1},
        "types": {"t": True},
    }
