"""Run the benchmarks: ``python -m bench.run [--quick] [--only api,images,query,jobs]``.

One run = one fresh database ``fractal_bench_<hex>`` on the PostgreSQL at 127.0.0.1:5432, NATS
streams under the prefix ``b<hex>`` on 127.0.0.1:4222, ``fractal-api serve`` (and, for the job
benchmarks, ``fractal-runner serve``) as separate processes on free loopback ports. All of it is
removed at the end, also after a failure, Ctrl-C or SIGTERM. Results go to
``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``; a table of our
figures next to the reference's is printed at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import grpc.aio

from bench import (
    api_bench,
    concurrency_bench,
    export_bench,
    images_bench,
    jobs_bench,
    lists_bench,
    query_bench,
    slurm_bench,
)
from bench.client import ApiClient, image_records, make_images
from bench.reference import VERSION as REFERENCE_VERSION
from bench.reference import RefClient, ReferenceUnavailable, RefError
from bench.report import format_table, rows_as_dicts, summary_rows
from bench.stack import ADMIN_EMAIL, ADMIN_PASSWORD, BenchStack
from bench.stats import machine_info
from fractal_grpc.client import open_channel

# The reference adds 3–20 images/s one by one on a loaded machine: its blocks are this long.
REF_SINGLE_BLOCK = 200
SECTIONS = ("api", "images", "query", "jobs", "lists", "export", "delay", "slurm")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    mode: str
    # api: (concurrency, client processes), measured in this order
    list_levels: tuple[tuple[int, int], ...]
    list_warmup: float
    list_duration: float
    # api with h2load: (connections, streams per connection), measured in this order; a
    # warm-up of this many requests, then about this many seconds of requests
    h2load_levels: tuple[tuple[int, int], ...]
    h2load_warmup_requests: int
    h2load_duration: float
    # images
    bulk_images: int
    single_total: int
    single_block: int
    single_all: bool  # every image one by one (else: first and last block only)
    large_images: int
    large_batch: int
    # query
    query_sizes: tuple[int, ...]
    query_calls: int
    query_budget: float  # seconds per measured series, at most
    # jobs
    job_concurrency: int
    job_single_runs: int
    job_medium: tuple[int, int]  # (images, runs)
    job_large: tuple[int, int]  # (images, runs); each run is followed by the direct launch
    job_lean_runs: int  # the large pair again, the task's interpreter started with -S
    # lists: rows of each kind per user, and turns (a pass through our pages + one reference
    # GET) at each size, at most list_budget seconds per kind and size
    list_sizes: tuple[int, ...]
    list_rounds: tuple[int, ...]
    list_budget: float
    # export: runs over the large dataset (ours), then a dataset of this size on both, turns
    export_runs: int
    export_compare_images: int
    export_compare_runs: int


FULL = Config(
    mode="full",
    list_levels=((1, 1), (8, 1), (8, 2)),
    list_warmup=2.0,
    list_duration=10.0,
    h2load_levels=((1, 1), (1, 8)),
    h2load_warmup_requests=4_000,
    h2load_duration=10.0,
    bulk_images=100_000,
    single_total=10_000,
    single_block=1_000,
    single_all=True,
    large_images=1_000_000,
    large_batch=100_000,
    query_sizes=(1_000, 5_000, 10_000),
    query_calls=100,
    query_budget=20.0,
    job_concurrency=8,
    job_single_runs=20,
    job_medium=(100, 3),
    job_large=(1_000, 2),
    job_lean_runs=2,
    list_sizes=(1_000, 10_000),
    list_rounds=(10, 3),
    list_budget=60.0,
    export_runs=2,
    export_compare_images=100_000,
    export_compare_runs=3,
)

QUICK = Config(
    mode="quick",
    list_levels=((1, 1), (8, 1)),
    list_warmup=1.0,
    list_duration=3.0,
    h2load_levels=((1, 1), (1, 8)),
    h2load_warmup_requests=1_500,
    h2load_duration=3.0,
    bulk_images=100_000,
    single_total=10_000,
    single_block=200,
    single_all=False,
    large_images=100_000,
    large_batch=50_000,
    query_sizes=(1_000, 5_000, 10_000),
    query_calls=30,
    query_budget=5.0,
    job_concurrency=8,
    job_single_runs=5,
    job_medium=(100, 1),
    job_large=(200, 1),
    job_lean_runs=1,
    list_sizes=(1_000, 10_000),
    list_rounds=(3, 1),
    list_budget=20.0,
    export_runs=1,
    export_compare_images=100_000,
    export_compare_runs=1,
)


class Runner:
    """Runs the selected sections against one stack, recording into ``self.sections``."""

    def __init__(
        self, stack: BenchStack, config: Config, selected: list[str], reference: bool = True
    ) -> None:
        self.stack = stack
        self.config = config
        self.selected = selected
        self.sections: dict[str, Any] = {}
        self.zarr_root = str(stack.state_dir / "zarr")
        self.large: images_bench.LargeDataset | None = None
        self.with_reference = reference
        # fractal-server 2.3.11: its admin and a verified user, or why it is not there.
        self.ref_admin: RefClient | None = None
        self.ref_user: RefClient | None = None
        self.reference_problem: str | None = None if reference else "not run (--no-reference)"

    def pids(self) -> dict[str, int]:
        names = ("api", "runner", "reference")
        return {n: p for n in names if (p := self.stack.pid(n)) is not None}

    async def _start_reference(self) -> None:
        print(f"[reference] fractal-server {REFERENCE_VERSION}", flush=True)
        t0 = time.perf_counter()
        try:
            server = await asyncio.to_thread(self.stack.start_reference)
            self.ref_admin = RefClient.login(server.address, ADMIN_EMAIL, ADMIN_PASSWORD)
            self.ref_user = self.ref_admin.new_user()
        except (ReferenceUnavailable, RefError, OSError) as exc:
            self.reference_problem = f"fractal-server {REFERENCE_VERSION} did not run here: {exc}"
            print(f"  {self.reference_problem}", file=sys.stderr, flush=True)
            if self.stack.reference is not None:
                print(self.stack.reference.log_tail(), file=sys.stderr)
            return
        print(f"  up at {server.address} in {time.perf_counter() - t0:.1f} s", flush=True)

    async def run(self) -> None:
        address = self.stack.start_api()
        if self.with_reference:
            await self._start_reference()
        async with open_channel(address) as channel:
            admin = await ApiClient.login(channel, ADMIN_EMAIL, ADMIN_PASSWORD)
            user = await admin.new_user()
            steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                "api": lambda: self.api(address, admin),
                "images": lambda: self.images(user),
                "query": lambda: self.query(user),
                "jobs": lambda: self.jobs(user),
                "lists": lambda: self.lists(user),
                "export": lambda: self.export(user),
                "delay": lambda: concurrency_bench.bench_delay(
                    address, user, self.zarr_root, images=100_000, baseline_seconds=3.0
                ),
                # On the cluster of deploy/local, without the stack (bench/slurm_bench.py).
                "slurm": lambda: slurm_bench.section(quick=self.config.mode == "quick"),
            }
            for name in self.selected:
                print(f"[{name}]", flush=True)
                t0 = time.perf_counter()
                try:
                    self.sections[name] = await steps[name]()
                except Exception as exc:  # noqa: BLE001 - the other sections go on
                    traceback.print_exc()
                    self.sections[name] = {"error": describe(exc)}
                    self._print_logs()
                self.sections[name]["section_seconds"] = round(time.perf_counter() - t0, 1)

    def _print_logs(self) -> None:
        for service in ("api", "runner"):
            tail = self.stack.log_tail(service)
            if tail:
                print(f"--- last lines of {service}.log ---\n{tail}", file=sys.stderr)

    async def _part(self, out: dict[str, Any], key: str, part: Awaitable[dict[str, Any]]) -> None:
        """``out[key] = await part``, or the error, so that the next parts still run."""
        try:
            out[key] = await part
        except Exception as exc:  # noqa: BLE001
            print(f"  {key}: FAILED: {describe(exc)}", file=sys.stderr, flush=True)
            self._print_logs()
            out[key] = {"error": describe(exc)}

    async def api(self, address: str, admin: ApiClient) -> dict[str, Any]:
        c = self.config
        user = await api_bench.list_projects_user(admin)
        out: dict[str, Any] = {}
        await self._part(
            out,
            "list_projects",
            api_bench.bench_list_projects(
                address,
                user,
                levels=list(c.list_levels),
                warmup=c.list_warmup,
                duration=c.list_duration,
                pids=self.pids(),
            ),
        )
        await self._part(
            out,
            "list_projects_h2load",
            api_bench.bench_list_projects_h2load(
                address,
                user,
                levels=list(c.h2load_levels),
                warmup_requests=c.h2load_warmup_requests,
                duration=c.h2load_duration,
                pids=self.pids(),
                reference=self._ref_list_projects_user(),
            ),
        )
        return out

    def _ref_list_projects_user(self) -> tuple[str, RefClient] | None:
        """A reference user who is a member of as many projects as ours, and its address."""
        if self.ref_admin is None or self.stack.reference is None:
            return None
        ref_user = self.ref_admin.new_user()
        for i in range(api_bench.PROJECTS_PER_USER):
            ref_user.new_project(f"bench-project-{i}")
        return self.stack.reference.address, ref_user

    async def _large(self, user: ApiClient, project_id: int) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        self.large = await images_bench.load_large(
            user, project_id, self.zarr_root, size=c.large_images, batch=c.large_batch
        )
        return images_bench.large_result(self.large, c.large_batch, time.perf_counter() - t0)

    async def images(self, user: ApiClient) -> dict[str, Any]:
        c = self.config
        project_id = await user.new_project("bench-images")
        out: dict[str, Any] = {}
        await self._part(
            out,
            "bulk",
            images_bench.bench_bulk(user, project_id, self.zarr_root, c.bulk_images, self.pids()),
        )
        await self._part(
            out,
            "single",
            images_bench.bench_single(
                user,
                project_id,
                self.zarr_root,
                total=c.single_total,
                block=c.single_block,
                full=c.single_all,
            ),
        )
        if self.ref_user is not None:
            await self._part(
                out,
                "single_reference",
                asyncio.to_thread(
                    images_bench.bench_single_reference,
                    self.ref_user,
                    self.zarr_root,
                    total=c.single_total,
                    block=min(c.single_block, REF_SINGLE_BLOCK),
                ),
            )
        await self._part(out, "large", self._large(user, project_id))
        return out

    async def query(self, user: ApiClient) -> dict[str, Any]:
        c = self.config
        project_id = await user.new_project("bench-query")
        out: dict[str, Any] = {"filters": "attributes {acquisition: 1}, types {3D: true}"}
        if self.large is None:
            out["large_setup"] = await self._large(user, project_id)
        assert self.large is not None
        targets: list[tuple[int, int, int]] = []  # (project, dataset, size)
        for size in c.query_sizes:
            zarr_dir = f"{self.zarr_root}/query-{size}"
            dataset_id = await user.new_dataset(project_id, zarr_dir)
            await user.add_images(project_id, dataset_id, make_images(zarr_dir, 0, size))
            targets.append((project_id, dataset_id, size))
        targets.append((self.large.project_id, self.large.dataset_id, self.large.size))

        async def measure_all() -> list[dict[str, Any]]:
            return [
                await query_bench.bench_query(
                    user, p, d, n, calls=c.query_calls, budget=c.query_budget
                )
                for p, d, n in targets
            ]

        # As loaded: right after the AddImages calls, before PostgreSQL has table statistics
        # for the new rows (autovacuum analyses a table only after a while).
        out["sizes"] = await measure_all()
        print("  ANALYZE api.images, then again:", flush=True)
        await self.stack.analyze_images()
        out["sizes_analyzed"] = await measure_all()
        if self.ref_user is not None:
            print("  against the reference, taking turns:", flush=True)
            ref = self.ref_user
            ref_project = ref.new_project("bench-query")
            pairs = []
            for p, d, n in targets:
                if n > max(c.query_sizes):
                    continue  # the 1,000,000-image dataset: ours only
                zarr_dir = f"{self.zarr_root}/query-{n}"
                ref_dataset = ref.import_dataset(
                    ref_project, zarr_dir, image_records(zarr_dir, 0, n)
                )
                pairs.append(
                    await query_bench.bench_query_pair(
                        user, (p, d), ref, (ref_project, ref_dataset), n, calls=c.query_calls
                    )
                )
            out["reference"] = pairs
        else:
            out["reference"] = self.reference_problem
        return out

    async def jobs(self, user: ApiClient) -> dict[str, Any]:
        c = self.config
        # The image sections leave a million fresh rows: vacuum them now, not during a job.
        settle_seconds = await self.stack.settle_database()
        await asyncio.to_thread(self.stack.start_runner)
        project_id = await user.new_project("bench-jobs")
        reference = None
        if self.ref_user is not None:
            reference = jobs_bench.RefJobs(
                self.ref_user,
                self.ref_user.new_project("bench-jobs"),
                self.zarr_root,
                c.job_concurrency,
            )
        result = await jobs_bench.bench_jobs(
            user,
            project_id,
            self.zarr_root,
            self.stack.state_dir / "direct",
            concurrency=c.job_concurrency,
            single_runs=c.job_single_runs,
            medium=c.job_medium,
            large=c.job_large,
            lean_runs=c.job_lean_runs,
            pids=self.pids(),
            reference=reference,
            reference_problem=self.reference_problem,
        )
        return {**result, "vacuum_before_seconds": round(settle_seconds, 1)}

    async def lists(self, user: ApiClient) -> dict[str, Any]:
        c = self.config
        await asyncio.to_thread(self.stack.start_runner)
        db, zarr = self.stack.plain_database_url, self.zarr_root
        ours = lists_bench.Sides(
            await lists_bench.seed_ours(user, db, zarr, "bench-lists-small"),
            await lists_bench.seed_ours(user, db, zarr, "bench-lists-large"),
        )
        reference = None
        if self.ref_user is not None and self.stack.reference is not None:
            ref_db = self.stack.reference.db_url()
            sides = lists_bench.Sides(
                await lists_bench.seed_reference(self.ref_user, ref_db, zarr, "bench-lists-small"),
                await lists_bench.seed_reference(self.ref_user, ref_db, zarr, "bench-lists-large"),
            )
            reference = (self.ref_user, sides)
        result = await lists_bench.bench_lists(
            user,
            ours,
            reference,
            sizes=c.list_sizes,
            rounds=dict(zip(c.list_sizes, c.list_rounds, strict=True)),
            budget=c.list_budget,
            metrics_url=self.stack.api_metrics_url,
            api_pid=self.stack.pid("api"),
        )
        return {**result, "reference": None if reference else self.reference_problem}

    async def export(self, user: ApiClient) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {"reference": None if self.ref_user else self.reference_problem}
        if self.large is None:
            out["large_setup"] = await self._large(
                user, await user.new_project("bench-export-large")
            )
        assert self.large is not None
        large = (self.large.project_id, self.large.dataset_id, self.large.size)
        result = await export_bench.bench_export(
            user,
            large,
            self.ref_user,
            self.zarr_root,
            large_runs=c.export_runs,
            compare_images=c.export_compare_images,
            compare_runs=c.export_compare_runs,
            pids=self.pids(),
        )
        return {**out, **result}


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM is handled like Ctrl-C: unwind, then clean up."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While cleaning up, a second Ctrl-C or SIGTERM must not leave things half removed."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _has_error(node: Any) -> bool:
    if isinstance(node, dict):
        return "error" in node or any(_has_error(v) for v in node.values())
    return False


def describe(exc: BaseException) -> str:
    """One line for an error; gRPC errors as CODE: details."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized variant (< 2 minutes)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temporary state directory (logs)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help=f"do not run fractal-server {REFERENCE_VERSION} beside ours (no reference column)",
    )
    args = parser.parse_args(argv)
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(SECTIONS))
    if unknown or not selected:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    return args, [s for s in SECTIONS if s in selected]


def main(argv: list[str] | None = None) -> int:
    args, selected = _parse_args(argv)
    config = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    record: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "mode": config.mode,
        "sections_selected": selected,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "machine": machine_info(),
        "config": config.__dict__,
    }
    signal.signal(signal.SIGTERM, _terminate)
    stack = BenchStack(keep_state=args.keep_state)
    runner = Runner(stack, config, selected, reference=not args.no_reference)
    status = "ok"
    print(
        f"bench ({config.mode}): database {stack.db_name}, NATS prefix {stack.nats_prefix}, "
        f"state {stack.state_dir}",
        flush=True,
    )
    try:
        stack.open()
        asyncio.run(runner.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "interrupted"
        print("\nbench: interrupted; cleaning up…", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, then cleaned up
        status = f"failed: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        with _signals_ignored():
            for problem in stack.close():
                print(f"bench: cleanup: {problem}", file=sys.stderr)
    if status == "ok" and _has_error(runner.sections):
        status = "some benchmarks failed"

    record["reference"] = {
        "system": f"fractal-server {REFERENCE_VERSION}",
        "ran": runner.ref_admin is not None,
        "problem": runner.reference_problem,
    }
    rows = summary_rows(runner.sections, runner.reference_problem)
    record.update(
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        status=status,
        sections=runner.sections,
        summary=rows_as_dicts(rows),
    )
    print()
    if runner.reference_problem:
        print(f"Reference column: {runner.reference_problem}\n")
    print(format_table(rows))
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2, default=str) + "\n"
        path = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(text)
        (RESULTS_DIR / "latest.json").write_text(text)
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        print(f"\nresults: {shown}")
    print(f"status: {status}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
