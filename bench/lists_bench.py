"""ListJobs, ListWorkflows and ListTasks at 1,000 and 10,000 rows, and the reference's
unpaginated equivalents (GET /api/v2/project/{id}/job/, /api/v2/project/{id}/workflow/,
/api/v2/task/).

The rows: in each system one user has two projects; in each, one job, one workflow (with one
workflow task) and one task are made through the API (the job is run to the end), then copied
in SQL (``clone_sql``: every column as in the original, names and sources made unique) until
the first project has 1,000 jobs and workflows and the second 10,000. Both systems get the same
rows: a job with its three dumps and its log, a workflow whose one task is embedded by the
reference's answer, a task without args schemas.

Jobs and workflows: the 1,000 and the 10,000 project exist together and are read in turns
(bench/interleave.py, the order rotating each round): one pass through each of our two lists
(pages of 100, first page then each next token, every call timed) and one reference call of
each, so the machine's load at any moment falls on both sizes. The task catalogue is one for
everybody, so it is grown to 1,000 and read, then grown to 10,000 and read.

Besides the client's time, the api's own time per page (``server_mean_ms``) comes from its
Prometheus histogram, read before and after each pass: what the server spent from the call's
arrival to its status, without the client, the channel and the scheduling of this process.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.client import ApiClient
from bench.interleave import ratio, turn_order
from bench.jobs_bench import TASK_COMMAND, RefJobs, run_job, setup_workflow
from bench.reference import RefClient
from bench.stats import percentile, process_cpu, summary_ms
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
    # rows of each kind besides the originals
    copies: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    async def grow(self, rows: int, kinds: Sequence[str] = KINDS) -> float:
        """Copy until there are ``rows`` of each of ``kinds`` (jobs, workflows with their one
        workflow task, tasks) in this seed; returns the seconds it took."""
        extra = {kind: rows - 1 - self.copies[kind] for kind in kinds}
        extra = {kind: n for kind, n in extra.items() if n > 0}
        if not extra:
            return 0.0
        t0 = time.perf_counter()
        t = self.tables
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                if "jobs" in extra:
                    jobs = await _columns(conn, t.jobs)
                    await conn.execute(clone_sql(t.jobs, jobs, {}), extra["jobs"], self.job_id)
                if "tasks" in extra:
                    tasks = await _columns(conn, t.tasks)
                    src = _quote(t.task_source)
                    base = self.copies["tasks"]
                    overrides = {t.task_source: f"src.{src} || '-copy-' || (g + {base})"}
                    await conn.execute(
                        clone_sql(t.tasks, tasks, overrides), extra["tasks"], self.task_id
                    )
                if "workflows" in extra:
                    await self._grow_workflows(conn, extra["workflows"])
            await conn.execute(f"ANALYZE {t.jobs}, {t.workflows}, {t.workflow_tasks}, {t.tasks}")
        finally:
            await conn.close()
        for kind, n in extra.items():
            self.copies[kind] += n
        return time.perf_counter() - t0

    async def _grow_workflows(self, conn: asyncpg.Connection, extra: int) -> None:
        t = self.tables
        last = await conn.fetchval(f"SELECT max(id) FROM {t.workflows}")
        workflows = await _columns(conn, t.workflows)
        overrides = {"name": f"src.name || '-copy-' || (g + {self.copies['workflows']})"}
        await conn.execute(clone_sql(t.workflows, workflows, overrides), extra, self.workflow_id)
        wftasks = await _columns(conn, t.workflow_tasks)
        parents = f"SELECT id FROM {t.workflows} WHERE project_id = $2 AND id > $3"
        await conn.execute(
            clone_children_sql(t.workflow_tasks, wftasks, "workflow_id", parents),
            self.workflow_task_id,
            self.project_id,
            last,
        )


async def seed_ours(
    client: ApiClient, database_url: str, zarr_root: str, name: str = "bench-lists"
) -> Seed:
    """A project with one workflow (one task) and one job run to the end, through the API."""
    project_id = await client.new_project(name)
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


async def seed_reference(
    client: RefClient, database_url: str, zarr_root: str, name: str = "bench-lists"
) -> Seed:
    """The same through the reference's REST API."""
    project_id = client.new_project(name)
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
    """Our three lists as a project of ``project_id`` sees them: its jobs, its workflows, and
    the task catalogue (which is everybody's)."""

    async def jobs(token: str) -> tuple[int, str]:
        r = await client.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(
                project_id=project_id, page_size=PAGE_SIZE, page_token=token
            ),
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


RPC_NAMES = {"jobs": "ListJobs", "workflows": "ListWorkflows", "tasks": "ListTasks"}


def ref_path(kind: str, project_id: int) -> str:
    """The reference's unpaginated list of a project (the task catalogue for tasks)."""
    if kind == "tasks":
        return "/api/v2/task/"
    return f"/api/v2/project/{project_id}/{kind[:-1]}/"


class ServerClock:
    """The api's own time per RPC, read before and after a pass: from its Prometheus histogram
    ``fractal_grpc_server_handling_seconds`` (sum and count by method), the time from the
    call's arrival in the interceptor to its status, without the client and the network; and
    the CPU seconds of the api process, which leave out the waits for a core on a loaded
    machine (and include the api's little background work)."""

    def __init__(self, metrics_url: str, api_pid: int | None = None) -> None:
        self.url = metrics_url
        self.api_pid = api_pid

    def read(self, method: str) -> tuple[float, int, float]:
        """(seconds, calls) so far of ``method``'s OK calls, and the api's CPU seconds."""
        cpu = process_cpu(self.api_pid) if self.api_pid else math.nan
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        seconds, calls = 0.0, 0
        for line in text.splitlines():
            if f'grpc_method="{method}"' not in line or 'grpc_code="OK"' not in line:
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("fractal_grpc_server_handling_seconds_sum"):
                seconds += float(value)
            elif name.startswith("fractal_grpc_server_handling_seconds_count"):
                calls += int(float(value))
        return seconds, calls, cpu


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


@dataclass
class Series:
    """One list at one size, on both systems: what the turns collected."""

    kind: str
    rows: int
    page: Page
    ref_path: str
    our_lat: list[float] = field(default_factory=list)
    server_seconds: float = 0.0
    server_calls: int = 0
    server_cpu: float = 0.0
    ref_lat: list[float] = field(default_factory=list)
    our_total: int = 0
    ref_total: int = 0
    ref_bytes: int = 0
    passes: int = 0

    async def ours(self, clock: ServerClock | None) -> None:
        before = await asyncio.to_thread(clock.read, RPC_NAMES[self.kind]) if clock else None
        self.our_total = await _our_pass(self.page, self.our_lat)
        self.passes += 1
        if clock is not None and before is not None:
            seconds, calls, cpu = await asyncio.to_thread(clock.read, RPC_NAMES[self.kind])
            self.server_seconds += seconds - before[0]
            self.server_calls += calls - before[1]
            self.server_cpu += cpu - before[2]

    async def reference(self, client: RefClient) -> None:
        self.ref_total, self.ref_bytes = await asyncio.to_thread(
            _ref_call, client, self.ref_path, self.ref_lat
        )

    def entry(self, scope: str, conditions: str) -> dict[str, Any]:
        if self.our_total < self.rows:
            raise RuntimeError(f"our {self.kind} list had {self.our_total}, expected {self.rows}")
        ours: dict[str, Any] = {
            "items": self.our_total,
            "page_size": PAGE_SIZE,
            "per_page": summary_ms(self.our_lat),
            "p95_ms": round(_p95(self.our_lat) * 1000, 3),
            "whole_list_ms": round(sum(self.our_lat) / max(self.passes, 1) * 1000, 1),
        }
        if self.server_calls:
            ours["server_mean_ms"] = round(self.server_seconds / self.server_calls * 1000, 3)
            if not math.isnan(self.server_cpu):
                per_page = self.server_cpu / self.server_calls * 1000
                ours["server_cpu_ms_per_page"] = round(per_page, 3)
        out: dict[str, Any] = {
            "kind": self.kind,
            "rows": self.rows,
            "scope": scope,
            "conditions": conditions,
            "rounds": self.passes,
            "ours": ours,
        }
        if self.ref_lat:
            if self.ref_total < self.rows:
                raise RuntimeError(f"reference {self.kind}: {self.ref_total}, not {self.rows}")
            out["reference"] = {
                "items": self.ref_total,
                "bytes": self.ref_bytes,
                "path": self.ref_path,
                "per_call": summary_ms(self.ref_lat),
                "p95_ms": round(_p95(self.ref_lat) * 1000, 3),
            }
            out["reference_call_over_our_page"] = ratio(
                out["reference"]["per_call"]["p50_ms"], ours["per_page"]["p50_ms"]
            )
        return out


async def _turns(
    series: Sequence[Series],
    ref_client: RefClient | None,
    clock: ServerClock | None,
    rounds: int,
    budget: float,
) -> None:
    """``rounds`` rounds (fewer when ``budget`` seconds run out) of one pass through each of
    our lists and one reference call of each, in an order that rotates every round."""
    steps: list[tuple[Series, bool]] = [(s, False) for s in series]
    if ref_client is not None:
        steps += [(s, True) for s in series]
    deadline = time.perf_counter() + budget
    for index in range(rounds):
        for step in turn_order(steps, index):
            item, is_ref = step
            if is_ref:
                assert ref_client is not None
                await item.reference(ref_client)
            else:
                await item.ours(clock)
        if time.perf_counter() > deadline:
            break


@dataclass(frozen=True)
class Sides:
    """One system's two projects: ``small`` grown to the first size, ``large`` to the second."""

    small: Seed
    large: Seed


async def bench_lists(
    client: ApiClient,
    ours: Sides,
    reference: tuple[RefClient, Sides] | None,
    *,
    sizes: Sequence[int],
    rounds: Mapping[int, int],
    budget: float,
    metrics_url: str | None = None,
    api_pid: int | None = None,
) -> dict[str, Any]:
    """Jobs and workflows: a project of ``sizes[0]`` rows and one of ``sizes[1]`` (the same
    user), both seeded first, then read in interleaved turns, so that the machine's load at any
    moment falls on both sizes alike. Tasks (one catalogue for everybody, so its two sizes
    cannot exist at once): grown to the first size and read, then to the second and read."""
    small, large = sizes
    clock = ServerClock(metrics_url, api_pid) if metrics_url else None
    systems = [("ours", ours)] + ([("reference", reference[1])] if reference else [])
    ref_client = reference[0] if reference else None
    seeded: dict[str, dict[str, float]] = {}
    for name, sides in systems:
        seeded[name] = {
            "small": round(await sides.small.grow(small, TASKS_TOO), 2),
            "large": round(await sides.large.grow(large, ("jobs", "workflows")), 2),
        }
    n_rounds = max(rounds.values())
    conditions = f"{small:,} and {large:,} read in alternating turns"
    out: list[dict[str, Any]] = []
    for kind in ("jobs", "workflows"):
        series = [
            Series(
                kind,
                size,
                our_pages(client, seed.project_id)[kind],
                ref_path(kind, ref_seed.project_id) if reference else "",
            )
            for size, seed, ref_seed in _pairs(sizes, ours, reference)
        ]
        await _turns(series, ref_client, clock, n_rounds, budget)
        for item in series:
            out.append(_said(item.entry("per project", conditions)))
    for size, grow in ((small, False), (large, True)):
        if grow:
            for name, sides in systems:
                # The small project's tasks stay: the large one's make up the rest.
                extra = round(await sides.large.grow(large - small, ("tasks",)), 2)
                seeded[name]["tasks_to_large"] = extra
        series = [Series("tasks", size, our_pages(client, 0)["tasks"], ref_path("tasks", 0))]
        await _turns(series, ref_client, clock, rounds[size], budget)
        out.append(_said(series[0].entry("catalogue", "alone (one catalogue for everybody)")))
    return {"page_size": PAGE_SIZE, "sizes": list(sizes), "lists": out, "seed_seconds": seeded}


TASKS_TOO = ("jobs", "workflows", "tasks")


def _pairs(
    sizes: Sequence[int], ours: Sides, reference: tuple[RefClient, Sides] | None
) -> list[tuple[int, Seed, Seed]]:
    ref = reference[1] if reference else ours
    return [(sizes[0], ours.small, ref.small), (sizes[1], ours.large, ref.large)]


def _p95(seconds: Sequence[float]) -> float:
    return percentile(list(seconds), 95)


def _said(entry: dict[str, Any]) -> dict[str, Any]:
    ours = entry["ours"]
    text = (
        f"  List{entry['kind'].title()} {entry['rows']:,} rows: page of {PAGE_SIZE} p50 "
        f"{ours['per_page']['p50_ms']:.1f} ms, p95 {ours['p95_ms']:.1f} ms"
    )
    if "server_mean_ms" in ours:
        text += f", server {ours['server_mean_ms']:.1f} ms/page"
    if "server_cpu_ms_per_page" in ours:
        text += f" ({ours['server_cpu_ms_per_page']:.1f} ms CPU)"
    ref = entry.get("reference")
    if ref:
        text += (
            f"; reference GET {ref['path']} ({ref['items']:,} items, {ref['bytes'] / 1e6:.1f} MB) "
            f"p50 {ref['per_call']['p50_ms']:.0f} ms"
        )
    print(text, flush=True)
    return entry
