"""Jobs of one parallel task (bench/trivial_task.py) over N images, submit → DONE, and the same
task processes launched directly for comparison.

A job is timed from just before SubmitJob to the WatchJob message that reports DONE. Every job
gets a fresh dataset (its images added before the clock starts). The direct launch does what the
runner's local executor does per call, with the same concurrency: write the args JSON, open the
log file, start ``python trivial_task.py --args-json … --out-json …`` in its own session with
stdout/stderr to the log, wait, read the (absent) output; a sliding window of ``concurrency``.

With a reference (fractal-server 2.3.11, bench/reference.py), every job is run on both systems
with the same task command, the same images and the same ``parallel_tasks_per_job``, taking
turns (bench/interleave.py). The reference has no change stream: its job is polled every
``REF_POLL`` seconds, so its client-side time is late by half of that on average; the
server-side times (end − start as each system records them) have no such delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import ApiClient, image_records, make_images
from bench.interleave import median, ratio, turn_order
from bench.reference import RefClient, server_seconds
from bench.stats import CpuMeter, summary_ms
from fractal.v2 import job_pb2
from fractal_runner.taskproc.local_executor import use_pidfd_child_watcher

TASK_SCRIPT = Path(__file__).resolve().parent / "trivial_task.py"
TASK_COMMAND = f"{sys.executable} {TASK_SCRIPT}"
# The same task on an interpreter started without `site` (-S): no site-packages and no .pth
# files (this venv's editable installs cost ~15 ms per start), so the runner's own per-call
# work weighs more in the job/direct ratio.
LEAN_TASK_COMMAND = f"{sys.executable} -S {TASK_SCRIPT}"


class JobFailed(RuntimeError):
    pass


async def setup_workflow(
    client: ApiClient,
    project_id: int,
    concurrency: int,
    command: str = TASK_COMMAND,
    tasks: int = 1,
) -> int:
    meta = {"parallel_tasks_per_job": concurrency}
    task_id = await client.new_parallel_task(command, meta)
    return await client.new_workflow(project_id, task_id, meta, tasks)


# A workflow to run: (task command, number of workflow tasks, each that task).
Shape = tuple[str, int]


async def run_job(
    client: ApiClient, project_id: int, workflow_id: int, zarr_root: str, images: int
) -> float:
    """Seconds from submit to DONE for a job over a fresh dataset of ``images`` images."""
    seconds, _ = await run_job_timed(client, project_id, workflow_id, zarr_root, images)
    return seconds


async def run_job_timed(
    client: ApiClient, project_id: int, workflow_id: int, zarr_root: str, images: int
) -> tuple[float, float | None]:
    """(client seconds from submit to DONE, server seconds end − start of the job)."""
    zarr_dir = f"{zarr_root}/job-{time.monotonic_ns()}"
    dataset_id = await client.new_dataset(project_id, zarr_dir)
    await client.add_images(project_id, dataset_id, make_images(zarr_dir, 0, images))
    t0 = time.perf_counter()
    job = await client.submit_and_wait(
        project_id, workflow_id, dataset_id, watch_seconds=max(120.0, images * 0.5)
    )
    seconds = time.perf_counter() - t0
    if job.status != job_pb2.JOB_STATUS_DONE:
        raise JobFailed(f"job {job.id} ended {job_pb2.JobStatus.Name(job.status)}:\n{job.log}")
    server: float | None = None
    if job.HasField("start_time") and job.HasField("end_time"):
        server = (job.end_time.ToDatetime() - job.start_time.ToDatetime()).total_seconds()
    return seconds, server


# Seconds between two GETs of a reference job while waiting for it to end.
REF_POLL = 0.02


@dataclass
class RefJobs:
    """Jobs on fractal-server: one task and workflow per command, a fresh dataset per job."""

    client: RefClient
    project_id: int
    zarr_root: str
    # None: no parallel_tasks_per_job at all (the reference then runs every call of the task
    # on its thread pool, Python's default size: cores + 4)
    concurrency: int | None
    workflows: dict[Shape, int] = field(default_factory=dict)

    def workflow(self, shape: Shape) -> int:
        if shape not in self.workflows:
            command, tasks = shape
            meta = {} if self.concurrency is None else {"parallel_tasks_per_job": self.concurrency}
            task_id = self.client.new_parallel_task(command, meta)
            self.workflows[shape] = self.client.new_workflow(self.project_id, task_id, meta, tasks)
        return self.workflows[shape]

    async def run(self, images: int, shape: Shape) -> tuple[float, float | None]:
        workflow_id = self.workflow(shape)
        zarr_dir = f"{self.zarr_root}/ref-job-{time.monotonic_ns()}"
        dataset_id = self.client.import_dataset(
            self.project_id, zarr_dir, image_records(zarr_dir, 0, images)
        )
        t0 = time.perf_counter()
        job = await asyncio.to_thread(
            self.client.submit_and_wait,
            self.project_id,
            workflow_id,
            dataset_id,
            REF_POLL,
            max(120.0, images * 0.5 * shape[1]),
        )
        seconds = time.perf_counter() - t0
        if job["status"] != "done":
            raise JobFailed(f"reference job {job['id']} ended {job['status']}:\n{job['log']}")
        return seconds, server_seconds(job)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _write_args(path: Path, args: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(args, handle, indent=2)


def _read_output(path: Path) -> object:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


async def direct_launch(
    images: int, concurrency: int, workdir: Path, command: str = TASK_COMMAND
) -> float:
    """Seconds to run ``images`` trivial task processes, ``concurrency`` at a time.

    File operations are blocking calls in the event loop, and processes are waited for through
    pidfds where the kernel has them, as in the runner's executor."""
    use_pidfd_child_watcher()
    _fresh_dir(workdir)
    argv = shlex.split(command)
    indices = iter(range(images))
    running: set[asyncio.subprocess.Process] = set()

    async def one(i: int) -> None:
        args_json, out_json = workdir / f"{i}.args.json", workdir / f"{i}.out.json"
        _write_args(args_json, {"zarr_url": f"/bench/zarr/{i}"})
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_json)
        log_fd = os.open(workdir / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                "--args-json",
                str(args_json),
                "--out-json",
                str(out_json),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        running.add(proc)
        try:
            code = await proc.wait()
        finally:
            running.discard(proc)
        if code != 0:
            raise JobFailed(f"direct task call {i} exited with {code}")
        _read_output(out_json)

    async def worker() -> None:
        for i in indices:
            await one(i)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, images))))
    finally:
        for proc in running:  # only on failure or cancellation
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    seconds = time.perf_counter() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


Side = Callable[[int, Shape], Awaitable[tuple[float, float | None]]]


async def _rounds(
    sides: dict[str, Side], images: int, runs: int, shape: Shape, pids: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """``runs`` rounds; in each, every side runs once, in turns (bench/interleave.py)."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for index in range(runs):
        for name in turn_order(list(sides), index):
            meter = CpuMeter(pids)
            meter.start()
            seconds, server = await sides[name](images, shape)
            cpu = meter.stop()
            out[name].append(
                {
                    "seconds": round(seconds, 3),
                    "server_seconds": None if server is None else round(server, 3),
                    "turn": index,
                    "cpu_cores_used": cpu,
                }
            )
    return out


def _side_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    client = [r["seconds"] for r in runs]
    server = [r["server_seconds"] for r in runs if r["server_seconds"] is not None]
    med = median(client)
    return {
        "runs": runs,
        "median_seconds": None if med is None else round(med, 3),
        "server_median_seconds": None if not server else round(statistics.median(server), 3),
    }


def _summarise(
    images: int, shape: Shape, rounds: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    sides = {name: _side_summary(runs) for name, runs in rounds.items()}
    ours, ref, direct = sides.get("ours"), sides.get("reference"), sides.get("direct")
    result: dict[str, Any] = {
        "images": images,
        "command": shape[0],
        "workflow_tasks": shape[1],
        **sides,
    }
    if ref is not None and ours is not None:
        result["reference_over_ours"] = ratio(ref["median_seconds"], ours["median_seconds"])
        result["reference_over_ours_server"] = ratio(
            ref["server_median_seconds"], ours["server_median_seconds"]
        )
    if direct is not None:
        for name in ("ours", "reference"):
            if name in sides:
                result[f"{name}_over_direct"] = ratio(
                    sides[name]["median_seconds"], direct["median_seconds"]
                )
    return result


def _say(label: str, summary: dict[str, Any]) -> None:
    parts = []
    for name in ("ours", "reference", "direct"):
        if name in summary:
            side = summary[name]
            server = side["server_median_seconds"]
            parts.append(
                f"{name} {side['median_seconds']:.3f} s"
                + (f" (server {server:.3f} s)" if server is not None else "")
            )
    ratios = {k: v for k, v in summary.items() if "_over_" in k}
    print(f"  {label}: " + ", ".join(parts) + f" {ratios}", flush=True)


async def bench_jobs(
    client: ApiClient,
    project_id: int,
    zarr_root: str,
    workdir: Path,
    *,
    concurrency: int,
    single_runs: int,
    medium: tuple[int, int],
    large: tuple[int, int],
    lean_runs: int,
    pids: dict[str, int],
    reference: RefJobs | None = None,
    reference_problem: str | None = None,
) -> dict[str, object]:
    """``medium`` / ``large``: (images, runs). Every size is run on ours and, when given, on
    the reference, taking turns; the large size also against the direct launch of the same
    task processes (three sides taking turns), then ``lean_runs`` such rounds with the task on
    an interpreter started with -S."""
    workflows: dict[Shape, int] = {}

    async def ours(images: int, shape: Shape) -> tuple[float, float | None]:
        if shape not in workflows:
            command, tasks = shape
            workflows[shape] = await setup_workflow(client, project_id, concurrency, command, tasks)
        return await run_job_timed(client, project_id, workflows[shape], zarr_root, images)

    async def direct(images: int, shape: Shape) -> tuple[float, float | None]:
        command, tasks = shape
        seconds = 0.0
        for _ in range(tasks):
            seconds += await direct_launch(images, concurrency, workdir, command)
        return seconds, None

    sides: dict[str, Side] = {"ours": ours}
    if reference is not None:
        sides["reference"] = reference.run
    # Warm-up, not counted: the first job of each system pays for imports and caches.
    for side in sides.values():
        await side(1, (TASK_COMMAND, 1))

    single = _summarise(
        1, (TASK_COMMAND, 1), await _rounds(sides, 1, single_runs, (TASK_COMMAND, 1), pids)
    )
    single_direct = [await direct_launch(1, 1, workdir) for _ in range(single_runs)]
    single["direct_one_process"] = summary_ms(single_direct)
    _say("job over 1 image", single)

    medium_images, medium_runs = medium
    medium_result = _summarise(
        medium_images,
        (TASK_COMMAND, 1),
        await _rounds(sides, medium_images, medium_runs, (TASK_COMMAND, 1), pids),
    )
    _say(f"job over {medium_images} images", medium_result)
    three = _summarise(
        medium_images,
        (TASK_COMMAND, 3),
        await _rounds(sides, medium_images, medium_runs, (TASK_COMMAND, 3), pids),
    )
    _say(f"job over {medium_images} images, 3-task workflow", three)
    default_pool: dict[str, Any] | None = None
    if reference is not None:
        # The same size with the reference's own default concurrency (no chunks), to show
        # how much of the difference is its chunked execution.
        unchunked = RefJobs(reference.client, reference.project_id, reference.zarr_root, None)
        await unchunked.run(1, (TASK_COMMAND, 1))  # warm-up of its workflow
        default_pool = _summarise(
            medium_images,
            (TASK_COMMAND, 1),
            await _rounds(
                {"ours": ours, "reference": unchunked.run},
                medium_images,
                medium_runs,
                (TASK_COMMAND, 1),
                pids,
            ),
        )
        _say(
            f"job over {medium_images} images, reference without parallel_tasks_per_job",
            default_pool,
        )

    with_direct: dict[str, Side] = {**sides, "direct": direct}
    large_images, large_runs = large
    large_result = _summarise(
        large_images,
        (TASK_COMMAND, 1),
        await _rounds(with_direct, large_images, large_runs, (TASK_COMMAND, 1), pids),
    )
    _say(f"job over {large_images} images", large_result)
    lean_result: dict[str, Any] | None = None
    if lean_runs:
        # Ours against the direct launch only: this row is about the runner's own cost.
        lean_sides: dict[str, Side] = {"ours": ours, "direct": direct}
        lean_result = _summarise(
            large_images,
            (LEAN_TASK_COMMAND, 1),
            await _rounds(lean_sides, large_images, lean_runs, (LEAN_TASK_COMMAND, 1), pids),
        )
        _say(f"job over {large_images} images (python -S)", lean_result)
    return {
        "task": "bench/trivial_task.py (parallel, reads its args, writes no output)",
        "parallel_tasks_per_job": concurrency,
        "reference": "fractal-server 2.3.11" if reference is not None else reference_problem,
        "reference_poll_seconds": REF_POLL if reference is not None else None,
        "single_image": single,
        "medium": medium_result,
        "medium_three_tasks": three,
        "medium_reference_default_pool": default_pool,
        "large": large_result,
        "large_lean": lean_result,
    }
