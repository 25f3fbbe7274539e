"""Jobs of one parallel task (bench/trivial_task.py) over N images, submit → DONE, and the same
task processes launched directly for comparison.

A job is timed from just before SubmitJob to the WatchJob message that reports DONE. Every job
gets a fresh dataset (its images added before the clock starts). The direct launch does what the
runner's local executor does per call, with the same concurrency: write the args JSON, open the
log file, start ``python trivial_task.py --args-json … --out-json …`` in its own session with
stdout/stderr to the log, wait, read the (absent) output; a sliding window of ``concurrency``.
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
from pathlib import Path

from bench.client import ApiClient, make_images
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
    client: ApiClient, project_id: int, concurrency: int, command: str = TASK_COMMAND
) -> int:
    meta = {"parallel_tasks_per_job": concurrency}
    task_id = await client.new_parallel_task(command, meta)
    return await client.new_workflow(project_id, task_id, meta)


async def run_job(
    client: ApiClient, project_id: int, workflow_id: int, zarr_root: str, images: int
) -> float:
    """Seconds from submit to DONE for a job over a fresh dataset of ``images`` images."""
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
    return seconds


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
) -> dict[str, object]:
    """``medium`` / ``large``: (images, runs). Each large run is a job followed at once by the
    direct launch of the same number of task processes; then ``lean_runs`` such pairs with the
    task on an interpreter started with -S."""
    workflow_id = await setup_workflow(client, project_id, concurrency)
    await run_job(client, project_id, workflow_id, zarr_root, 1)  # warm-up, not counted

    single = [
        await run_job(client, project_id, workflow_id, zarr_root, 1) for _ in range(single_runs)
    ]
    single_direct = [await direct_launch(1, 1, workdir) for _ in range(single_runs)]
    print(
        f"  job over 1 image: p50 {statistics.median(single):.3f} s over {single_runs} runs "
        f"(one direct task process: {statistics.median(single_direct):.3f} s)",
        flush=True,
    )

    medium_images, medium_runs = medium
    medium_times = [
        await run_job(client, project_id, workflow_id, zarr_root, medium_images)
        for _ in range(medium_runs)
    ]
    print(f"  job over {medium_images} images: {[round(t, 2) for t in medium_times]} s")

    large_images, large_runs = large
    large_result = await _job_vs_direct(
        client,
        project_id,
        workflow_id,
        zarr_root,
        workdir,
        large_images,
        large_runs,
        concurrency,
        TASK_COMMAND,
        pids,
    )
    lean_result: dict[str, object] | None = None
    if lean_runs:
        lean_workflow = await setup_workflow(client, project_id, concurrency, LEAN_TASK_COMMAND)
        lean_result = await _job_vs_direct(
            client,
            project_id,
            lean_workflow,
            zarr_root,
            workdir,
            large_images,
            lean_runs,
            concurrency,
            LEAN_TASK_COMMAND,
            pids,
        )
    return {
        "task": "bench/trivial_task.py (parallel, reads its args, writes no output)",
        "parallel_tasks_per_job": concurrency,
        "single_image": {
            **summary_ms(single),
            "direct_one_process": summary_ms(single_direct),
        },
        "medium": {
            "images": medium_images,
            "seconds": [round(t, 3) for t in medium_times],
            "median_seconds": round(statistics.median(medium_times), 3),
        },
        "large": large_result,
        "large_lean": lean_result,
    }


async def _job_vs_direct(
    client: ApiClient,
    project_id: int,
    workflow_id: int,
    zarr_root: str,
    workdir: Path,
    images: int,
    runs: int,
    concurrency: int,
    command: str,
    pids: dict[str, int],
) -> dict[str, object]:
    """``runs`` pairs: a job over ``images`` images and, right before or after it, the same
    task processes launched directly. The order alternates (job first, then direct first, …),
    so that whatever the first of two back-to-back runs pays (or the second) is shared."""
    pairs: list[dict[str, object]] = []
    job_times: list[float] = []
    direct_times: list[float] = []
    for index in range(runs):
        meter = CpuMeter(pids)
        job_first = index % 2 == 0
        if not job_first:
            meter.start()
            direct_seconds = await direct_launch(images, concurrency, workdir, command)
            direct_cpu = meter.stop()
        meter.start()
        job_seconds = await run_job(client, project_id, workflow_id, zarr_root, images)
        job_cpu = meter.stop()
        if job_first:
            meter.start()
            direct_seconds = await direct_launch(images, concurrency, workdir, command)
            direct_cpu = meter.stop()
        job_times.append(job_seconds)
        direct_times.append(direct_seconds)
        pairs.append(
            {
                "job_seconds": round(job_seconds, 3),
                "direct_seconds": round(direct_seconds, 3),
                "ratio": round(job_seconds / direct_seconds, 3),
                "first": "job" if job_first else "direct",
                "job_cpu_cores_used": job_cpu,
                "direct_cpu_cores_used": direct_cpu,
            }
        )
        print(
            f"  job over {images} images{' (python -S)' if ' -S ' in command else ''}: "
            f"{job_seconds:.2f} s; "
            f"launched directly: {direct_seconds:.2f} s (ratio {job_seconds / direct_seconds:.3f}, "
            f"{'job' if job_first else 'direct'} first)",
            flush=True,
        )
    job_med, direct_med = statistics.median(job_times), statistics.median(direct_times)
    return {
        "images": images,
        "command": command,
        "runs": pairs,
        "job_median_seconds": round(job_med, 3),
        "direct_median_seconds": round(direct_med, 3),
        "ratio_of_medians": round(job_med / direct_med, 3),
    }
