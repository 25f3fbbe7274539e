"""ListJobs, ListWorkflows and ListTasks of a user who has 1,000, then 10,000 of each, and the
reference's unpaginated equivalents (GET /api/v2/job/, /api/v2/workflow/, /api/v2/task/).

The rows: one job, one workflow (with one workflow task) and one task are made through each
system's API (the job is run to the end), then copied in SQL in that system's database
(``clone_sql``: every column as in the original, names and sources made unique) until the user
has N of each. Both systems get the same rows: a job with its three dumps and its log, a
workflow whose one task is embedded by the reference's answer, a task without args schemas.

Ours: pages of 100 read through the whole list (first page, then each next token), every page
call timed; the total must be N. The reference: the whole list in one call, timed. The two take
turns (bench/interleave.py): one pass through our list, one call of the reference, and again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.client import ApiClient
from bench.interleave import ratio, turn_order
from bench.jobs_bench import TASK_COMMAND, RefJobs, run_job, setup_workflow
from bench.reference import RefClient
from bench.stats import percentile, summary_ms
from fractal.v2 import job_service_pb2, task_service_pb2, workflow_service_pb2

PAGE_SIZE = 100
KINDS = ("jobs", "workflows", "tasks")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def clone_sql(table: str, columns: Sequence[str], overrides: Mapping[str, str]) -> str:
    """``INSERT … SELECT`` copying the row ``$2`` of ``table`` ``$1`` times. ``overrides``: SQL
    expressions (over ``src`` and the copy's number ``g``) for some columns; ``id`` comes from
    the table's default."""
    names = [c for c in columns if c != "id"]
    values = [overrides.get(c, f"src.{_quote(c)}") for c in names]
    return (
        f"INSERT INTO {table} ({', '.join(_quote(c) for c in names)}) "
        f"SELECT {', '.join(values)} FROM {table} AS src, generate_series(1, $1::int) AS g "
        "WHERE src.id = $2"
    )


def clone_children_sql(table: str, columns: Sequence[str], parent_column: str, parents: str) -> str:
    """``INSERT … SELECT`` copying the row ``$1`` of ``table`` once under each parent id that
    the query ``parents`` returns (``$2``, ``$3`` are its parameters)."""
    names = [c for c in columns if c != "id"]
    values = ["p.id" if c == parent_column else f"src.{_quote(c)}" for c in names]
    return (
        f"INSERT INTO {table} ({', '.join(_quote(c) for c in names)}) "
        f"SELECT {', '.join(values)} FROM {table} AS src, ({parents}) AS p WHERE src.id = $1"
    )


@dataclass(frozen=True)
class Tables:
    """Where each system keeps the rows (schema-qualified), and its column names."""

    jobs: str
    workflows: str
    workflow_tasks: str
    tasks: str
    task_source: str = "source"


OUR_TABLES = Tables("api.jobs", "api.workflows", "api.workflow_tasks", "api.tasks")
REF_TABLES = Tables("public.jobv2", "public.workflowv2", "public.workflowtaskv2", "public.taskv2")


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    schema, name = table.split(".")
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        schema,
        name,
    )
    if not rows:
        raise RuntimeError(f"table {table} not found")
    return [r["column_name"] for r in rows]


@dataclass
class Seed:
    """One system's original rows and how many copies exist so far."""

    url: str
    tables: Tables
    job_id: int
    workflow_id: int
    workflow_task_id: int
    task_id: int
    project_id: int
    copies: int = 0  # rows of each kind besides the originals

    async def grow(self, rows: int) -> float:
        """Copy until there are ``rows`` of each kind; returns the seconds it took."""
        extra = rows - 1 - self.copies
        if extra <= 0:
            return 0.0
        t0 = time.perf_counter()
        t = self.tables
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                jobs = await _columns(conn, t.jobs)
                await conn.execute(clone_sql(t.jobs, jobs, {}), extra, self.job_id)
                tasks = await _columns(conn, t.tasks)
                base = self.copies
                src = _quote(t.task_source)
                overrides = {t.task_source: f"src.{src} || '-copy-' || (g + {base})"}
                await conn.execute(clone_sql(t.tasks, tasks, overrides), extra, self.task_id)
                last = await conn.fetchval(f"SELECT max(id) FROM {t.workflows}")
                workflows = await _columns(conn, t.workflows)
                overrides = {"name": f"src.name || '-copy-' || (g + {base})"}
                await conn.execute(
                    clone_sql(t.workflows, workflows, overrides), extra, self.workflow_id
                )
                wftasks = await _columns(conn, t.workflow_tasks)
                parents = f"SELECT id FROM {t.workflows} WHERE project_id = $2 AND id > $3"
                await conn.execute(
                    clone_children_sql(t.workflow_tasks, wftasks, "workflow_id", parents),
                    self.workflow_task_id,
                    self.project_id,
                    last,
                )
            await conn.execute(f"ANALYZE {t.jobs}, {t.workflows}, {t.workflow_tasks}, {t.tasks}")
        finally:
            await conn.close()
        self.copies += extra
        return time.perf_counter() - t0


async def seed_ours(client: ApiClient, database_url: str, zarr_root: str) -> Seed:
    """A project with one workflow (one task) and one job run to the end, through the API."""
    project_id = await client.new_project("bench-lists")
    workflow_id = await setup_workflow(client, project_id, 1, TASK_COMMAND)
    await run_job(client, project_id, workflow_id, zarr_root, 1)
    conn = await asyncpg.connect(database_url)
    try:
        job_id = await conn.fetchval(
            "SELECT id FROM api.jobs WHERE workflow_id = $1 ORDER BY id LIMIT 1", workflow_id
        )
        wftask = await conn.fetchrow(
            "SELECT id, task_id FROM api.workflow_tasks WHERE workflow_id = $1", workflow_id
        )
    finally:
        await conn.close()
    return Seed(
        database_url, OUR_TABLES, job_id, workflow_id, wftask["id"], wftask["task_id"], project_id
    )


async def seed_reference(client: RefClient, database_url: str, zarr_root: str) -> Seed:
    """The same through the reference's REST API."""
    project_id = client.new_project("bench-lists")
    jobs = RefJobs(client, project_id, zarr_root, concurrency=1)
    await jobs.run(1, (TASK_COMMAND, 1))
    workflow_id = jobs.workflows[(TASK_COMMAND, 1)]
    conn = await asyncpg.connect(database_url)
    try:
        job_id = await conn.fetchval(
            "SELECT id FROM public.jobv2 WHERE workflow_id = $1 ORDER BY id LIMIT 1", workflow_id
        )
        wftask = await conn.fetchrow(
            "SELECT id, task_id FROM public.workflowtaskv2 WHERE workflow_id = $1", workflow_id
        )
    finally:
        await conn.close()
    return Seed(
        database_url, REF_TABLES, job_id, workflow_id, wftask["id"], wftask["task_id"], project_id
    )


# One call of our list: (items, next token).
Page = Callable[[str], Awaitable[tuple[int, str]]]


def our_pages(client: ApiClient, project_id: int) -> dict[str, Page]:
    async def jobs(token: str) -> tuple[int, str]:
        r = await client.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=PAGE_SIZE, page_token=token),
            metadata=client.md,
        )
        return len(r.jobs), r.next_page_token

    async def workflows(token: str) -> tuple[int, str]:
        r = await client.workflows.ListWorkflows(
            workflow_service_pb2.ListWorkflowsRequest(
                project_id=project_id, page_size=PAGE_SIZE, page_token=token
            ),
            metadata=client.md,
        )
        return len(r.workflows), r.next_page_token

    async def tasks(token: str) -> tuple[int, str]:
        r = await client.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=PAGE_SIZE, page_token=token),
            metadata=client.md,
        )
        return len(r.tasks), r.next_page_token

    return {"jobs": jobs, "workflows": workflows, "tasks": tasks}


REF_PATHS = {"jobs": "/api/v2/job/", "workflows": "/api/v2/workflow/", "tasks": "/api/v2/task/"}


async def _our_pass(page: Page, latencies: list[float]) -> int:
    """Read the whole list page by page; returns the number of items."""
    token, total = "", 0
    while True:
        t0 = time.perf_counter()
        count, token = await page(token)
        latencies.append(time.perf_counter() - t0)
        total += count
        if not token:
            return total


def _ref_call(client: RefClient, path: str, latencies: list[float]) -> tuple[int, int]:
    """(items, bytes) of one unpaginated GET."""
    t0 = time.perf_counter()
    status, body = client.raw("GET", path)
    latencies.append(time.perf_counter() - t0)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    return len(_json_list(body)), len(body)


def _json_list(body: bytes) -> list[Any]:
    value = json.loads(body)
    if not isinstance(value, list):
        raise RuntimeError(f"expected a list, got {type(value).__name__}")
    return value


async def bench_lists(
    client: ApiClient,
    ours: Seed,
    reference: tuple[RefClient, Seed] | None,
    *,
    sizes: Sequence[int],
    rounds: Mapping[int, int],
    budget: float,
) -> dict[str, Any]:
    """For each size: grow both systems to that many rows of each kind, then, kind by kind,
    ``rounds[size]`` turns of (a pass through our pages, one reference GET)."""
    pages = our_pages(client, ours.project_id)
    out: list[dict[str, Any]] = []
    for size in sizes:
        seeded = {"ours": round(await ours.grow(size), 2)}
        if reference is not None:
            seeded["reference"] = round(await reference[1].grow(size), 2)
        for kind in KINDS:
            our_lat: list[float] = []
            ref_lat: list[float] = []
            our_total = ref_total = ref_bytes = 0
            sides = ["ours", "reference"] if reference is not None else ["ours"]
            deadline = time.perf_counter() + budget
            done = 0
            for index in range(rounds[size]):
                for side in turn_order(sides, index):
                    if side == "ours":
                        our_total = await _our_pass(pages[kind], our_lat)
                    else:
                        assert reference is not None
                        ref_total, ref_bytes = await asyncio.to_thread(
                            _ref_call, reference[0], REF_PATHS[kind], ref_lat
                        )
                done += 1
                if time.perf_counter() > deadline:
                    break
            if our_total < size:
                raise RuntimeError(f"our {kind} list had {our_total} items, expected {size}")
            entry: dict[str, Any] = {
                "kind": kind,
                "rows": size,
                "rounds": done,
                "ours": {
                    "items": our_total,
                    "page_size": PAGE_SIZE,
                    "per_page": summary_ms(our_lat),
                    "p95_ms": round(_p95(our_lat) * 1000, 3),
                    "whole_list_ms": round(sum(our_lat) / done * 1000, 1),
                },
            }
            if reference is not None:
                if ref_total < size:
                    raise RuntimeError(f"reference {kind}: {ref_total} items, expected {size}")
                entry["reference"] = {
                    "items": ref_total,
                    "bytes": ref_bytes,
                    "path": REF_PATHS[kind],
                    "per_call": summary_ms(ref_lat),
                    "p95_ms": round(_p95(ref_lat) * 1000, 3),
                }
                entry["reference_call_over_our_page"] = ratio(
                    entry["reference"]["per_call"]["p50_ms"], entry["ours"]["per_page"]["p50_ms"]
                )
            _say(entry)
            out.append(entry)
        out[-1]["seed_seconds"] = seeded
    return {"page_size": PAGE_SIZE, "sizes": list(sizes), "lists": out}


def _p95(seconds: Sequence[float]) -> float:
    return percentile(list(seconds), 95)


def _say(entry: Mapping[str, Any]) -> None:
    ours = entry["ours"]
    text = (
        f"  List{entry['kind'].title()} {entry['rows']:,} rows: page of {PAGE_SIZE} p50 "
        f"{ours['per_page']['p50_ms']:.1f} ms, p95 {ours['p95_ms']:.1f} ms"
    )
    ref = entry.get("reference")
    if ref:
        text += (
            f"; reference GET {ref['path']} ({ref['items']:,} items, {ref['bytes'] / 1e6:.1f} MB) "
            f"p50 {ref['per_call']['p50_ms']:.0f} ms"
        )
    print(text, flush=True)
