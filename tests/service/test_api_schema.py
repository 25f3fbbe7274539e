"""The api schema: the migrations and the models agree (nothing for autogenerate to add), and
data written under an older revision is carried forward."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import orjson
import pytest
from alembic import command
from pyroaring import BitMap64

from fractal_api.main import MIGRATIONS
from fractal_api.models import Base
from fractal_grpc.images.bitmaps import ALL, build_members, canonical_json
from fractal_grpc.migrate import alembic_config, upgrade
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


async def _fill_projects_at_0003(url: str, names: list[str]) -> list[int]:
    """Two users; the first is a member of projects named ``names`` (duplicates allowed, as
    concurrent creates could leave them before 0004), the second of one project named like the
    first of them. Returns the project ids, in order."""
    conn = await asyncpg.connect(url)
    try:
        users = [
            await conn.fetchval(
                "INSERT INTO api.users (email, hashed_password) VALUES ($1, 'x') RETURNING id",
                email,
            )
            for email in ("a@x.y", "b@x.y")
        ]
        ids = []
        for name in [*names, names[0]]:
            ids.append(
                await conn.fetchval(
                    "INSERT INTO api.projects (name) VALUES ($1) RETURNING id", name
                )
            )
        for i, project_id in enumerate(ids):
            await conn.execute(
                "INSERT INTO api.project_members (project_id, user_id) VALUES ($1, $2)",
                project_id,
                users[0] if i < len(names) else users[1],
            )
        await conn.execute(
            "INSERT INTO api.request_records (user_id, method, request_id, resource_id)"
            " VALUES ($1, 'CreateProject', 'r1', $2)",
            users[0],
            ids[0],
        )
        return ids
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def _migration_database() -> tuple[str, str, str]:
    name = f"fractal_migration_{RUN_ID}_{secrets.token_hex(2)}"
    asyncio.run(_admin_exec(f'CREATE DATABASE "{name}"'))
    plain = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    return name, plain, plain.replace("postgresql://", "postgresql+asyncpg://")


def test_0004_renames_duplicate_project_names_of_a_user() -> None:
    name, plain, url = _migration_database()
    try:
        upgrade(MIGRATIONS, url, "api", "0003")
        ids = asyncio.run(_fill_projects_at_0003(plain, ["a", "a", "b", "a"]))
        upgrade(MIGRATIONS, url, "api")
        projects = asyncio.run(_fetch(plain, "SELECT id, name FROM api.projects ORDER BY id"))
        members = asyncio.run(
            _fetch(plain, "SELECT project_id, project_name FROM api.project_members ORDER BY 1")
        )
        records = asyncio.run(
            _fetch(plain, "SELECT resource_id, request_hash FROM api.request_records")
        )
        # Back down and up again: the downgrade undoes what the upgrade did.
        command.downgrade(alembic_config(MIGRATIONS, url, "api"), "0003")
        upgrade(MIGRATIONS, url, "api")
    finally:
        drop_database(name)
    # The oldest keeps its name; the other user's "a" is not a duplicate (per user).
    expected = ["a", f"a ({ids[1]})", "b", f"a ({ids[3]})", "a"]
    assert projects == list(zip(ids, expected, strict=True))
    assert members == projects
    assert records == [(ids[0], None)]


def test_0004_stops_when_a_rename_still_collides() -> None:
    name, plain, url = _migration_database()
    try:
        upgrade(MIGRATIONS, url, "api", "0003")
        # The second "a" would become "a (<its id>)": make that name taken already.
        ids = asyncio.run(_fill_projects_at_0003(plain, ["a", "a"]))
        asyncio.run(
            _admin_sql(
                plain,
                f"INSERT INTO api.projects (name) VALUES ('a ({ids[1]})') RETURNING id",
                "INSERT INTO api.project_members (project_id, user_id)"
                " SELECT max(id), (SELECT min(id) FROM api.users) FROM api.projects",
            )
        )
        with pytest.raises(RuntimeError, match="several projects of one name"):
            upgrade(MIGRATIONS, url, "api")
        # Nothing changed: the revision is still 0003 and the names are as they were.
        version = asyncio.run(_fetch(plain, "SELECT version_num FROM api.alembic_version"))
        names = asyncio.run(_fetch(plain, "SELECT name FROM api.projects ORDER BY id"))
    finally:
        drop_database(name)
    assert version == [("0003",)]
    assert names == [("a",), ("a",), ("a",), (f"a ({ids[1]})",)]


async def _admin_sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()
