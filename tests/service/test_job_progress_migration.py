"""api migration 0007: existing jobs get one progress entry per task of their slice (states
kept, tasks a failed job had dropped back as pending, counts 0) and ``started_at``; the
downgrade gives the old form back."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from alembic import command
from test_api_schema import _fetch, _migration_database

from fractal_api.main import MIGRATIONS
from fractal_grpc.migrate import alembic_config, upgrade
from world import drop_database

SNAPSHOT = [
    {"order": 2, "workflow_task_id": 7, "task_name": "first"},
    {"order": 3, "workflow_task_id": 9, "task_name": "second"},
    {"order": 4, "workflow_task_id": 8, "task_name": "third"},
]
OLD = [
    {"workflow_task_id": 7, "order": 2, "status": "done"},
    {"workflow_task_id": 9, "order": 3, "status": "failed"},
]


async def _job_at_0004(url: str, statuses: list[dict[str, object]]) -> int:
    conn = await asyncpg.connect(url)
    try:
        job_id: int = await conn.fetchval(
            "INSERT INTO api.jobs (user_email, project_dump, workflow_dump, dataset_dump,"
            " tasks_snapshot, first_task_index, last_task_index, status, task_statuses)"
            " VALUES ('u@x', '{}', '{}', '{}', $1::jsonb, 2, 4, 'failed', $2::jsonb)"
            " RETURNING id",
            json.dumps(SNAPSHOT),
            json.dumps(statuses),
        )
        return job_id
    finally:
        await conn.close()


def test_0007_rewrites_task_statuses_and_back() -> None:
    name, plain, url = _migration_database()
    try:
        upgrade(MIGRATIONS, url, "api", "0004")
        job = asyncio.run(_job_at_0004(plain, OLD))
        empty = asyncio.run(_job_at_0004(plain, []))
        upgrade(MIGRATIONS, url, "api", "0007")
        after = dict(asyncio.run(_fetch(plain, "SELECT id, task_statuses FROM api.jobs")))
        started = asyncio.run(_fetch(plain, "SELECT started_at FROM api.jobs"))
        command.downgrade(alembic_config(MIGRATIONS, url, "api"), "0004")
        back = dict(asyncio.run(_fetch(plain, "SELECT id, task_statuses FROM api.jobs")))
    finally:
        drop_database(name)

    def entry(wftask: int, order: int, task_name: str, state: str) -> dict[str, object]:
        return {
            "workflow_task_id": wftask,
            "order": order,
            "task_name": task_name,
            "state": state,
            "calls_done": 0,
            "calls_failed": 0,
            "calls_total": 0,
        }

    expected = [
        entry(7, 2, "first", "done"),
        entry(9, 3, "second", "failed"),
        entry(8, 4, "third", "pending"),
    ]
    assert json.loads(str(after[job])) == expected
    # Entries come from the snapshot, whatever was stored.
    assert [e["state"] for e in json.loads(str(after[empty]))] == ["pending"] * 3
    assert started == [(None,), (None,)]
    assert json.loads(str(back[job])) == [
        *OLD,
        {"workflow_task_id": 8, "order": 4, "status": "submitted"},
    ]
