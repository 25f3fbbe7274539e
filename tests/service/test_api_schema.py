"""The api schema: the migrations and the models agree (nothing for autogenerate to add), and
data written under an older revision is carried forward."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
from pyroaring import BitMap64

from fractal_api.main import MIGRATIONS
from fractal_api.models import Base
from fractal_grpc.images.bitmaps import ALL, build_members, canonical_json
from fractal_grpc.migrate import upgrade
from world import PG_ADMIN_URL, RUN_ID, _admin_exec, drop_database, schema_diff


async def test_api_migrations_match_models(database_url: str) -> None:
    assert await schema_diff(database_url, Base.metadata, "api") == []


IMAGES = [
    (0, {"well": "A01", "n": 1}, {"3D": True}),
    (1, {"well": "A01", "n": 2.0}, {"3D": False}),
    (3, {"well": "B02", "n": 1.0}, {}),  # position 2 was removed
]


async def _fill_at_0001(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        project = await conn.fetchval("INSERT INTO api.projects (name) VALUES ('p') RETURNING id")
        dataset = await conn.fetchval(
            "INSERT INTO api.datasets (project_id, name, zarr_dir, image_count, next_position)"
            " VALUES ($1, 'd', '/zarr', 3, 4) RETURNING id",
            project,
        )
        await conn.fetchval(
            "INSERT INTO api.datasets (project_id, name, zarr_dir) VALUES ($1, 'empty', '/z')",
            project,
        )
        for position, attributes, types in IMAGES:
            await conn.execute(
                "INSERT INTO api.images (dataset_id, position, zarr_url, attributes, types)"
                " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
                dataset,
                position,
                f"/zarr/{position}",
                orjson.dumps(attributes).decode(),
                orjson.dumps(types).decode(),
            )
        # 0001's facet rows: counts only (one of them stale on purpose: the rebuild decides).
        await conn.execute(
            "INSERT INTO api.image_facets (dataset_id, kind, key, value, count)"
            """ VALUES ($1, 'a', 'well', '"A01"', 7)""",
            dataset,
        )
    finally:
        await conn.close()


async def _facets(url: str) -> tuple[dict[tuple[str, str, str], BitMap64], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT kind, key, value::text, count, members FROM api.image_facets"
        )
    finally:
        await conn.close()
    found = {}
    for kind, key, value, count, members in rows:
        bitmap = BitMap64.deserialize(members)
        assert len(bitmap) == count
        found[(kind, key, canonical_json(orjson.loads(value)))] = bitmap
    return found, {f"{key}={value}" for kind, key, value, _, _ in rows if kind == "a"}


def test_0002_builds_the_facet_bitmaps_of_existing_images() -> None:
    name = f"fractal_migration_{RUN_ID}"
    asyncio.run(_admin_exec(f'CREATE DATABASE "{name}"'))
    plain = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    url = plain.replace("postgresql://", "postgresql+asyncpg://")
    try:
        upgrade(MIGRATIONS, url, "api", "0001")
        asyncio.run(_fill_at_0001(plain))
        upgrade(MIGRATIONS, url, "api")
        facets, shown = asyncio.run(_facets(plain))
    finally:
        drop_database(name)
    assert facets == build_members(IMAGES)
    assert list(facets[ALL]) == [0, 1, 3]
    assert list(facets[("a", "n", "1")]) == [0, 3]
    assert list(facets[("a", "well", '"A01"')]) == [0, 1]
    # 1 and 1.0 share a facet, listed as first given; 2.0 alone stays a float.
    assert {"n=1", "n=2.0"} <= shown and "n=1.0" not in shown
