"""SLURM benchmark: scheduler calls and the runner's own overhead, on the cluster of deploy/local.

``python -m bench.slurm_bench [--images 1000,10000] [--interval 1.0] [--runs 2] [--json FILE]``

It drives the runner's SLURM executor (``SlurmSudoExecutor``, submitting as the cluster user
with ``sudo -u``) and its shared poller directly, with a task that does nothing (``/bin/true``),
so what is measured is SLURM and our machinery, not a task:

- **calls**: for a parallel task over N images (N from ``--images``), split by the batching
  heuristics, run ``--runs`` such tasks at once through one poller: sbatch, squeue and sacct
  calls, and per minute. Goals: sbatch = the heuristics' job count; one squeue per poll interval
  for the (cluster, user) however many jobs and runs; sacct only for ids squeue stopped listing.
- **overhead_one_call**: a 1-task 1-image job, submit → outcome read, minus the bare
  ``sbatch --wait`` turnaround of the very same script (median of a few). Goal < 0.3 s at 1 s.
- **by_hand_ratio**: for the first N, the executor's wall time divided by the wall time of the
  same batch scripts submitted by hand at once with ``sbatch --wait``. Goal ≤ 1.1.

The reference polls squeue every 5 s per executor, i.e. once per interval per running job.
Needs the cluster up (``make cluster``) and root (sudo to the cluster user).
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fractal_runner.slurm.batching import BatchingLimits, batching_heuristics
from fractal_runner.slurm.config_file import load_slurm_config_file
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands
from fractal_runner.slurm.sudo_executor import SlurmSudoExecutor
from fractal_runner.slurm.task_config import task_slurm_config
from fractal_runner.taskproc.calls import TaskCall
from fractal_runner.taskproc.layout import CallPaths, parallel_prefix

REPO = Path(__file__).resolve().parents[1]
USER = os.environ.get("FRACTAL_SLURM_USER", "fractal-worker")
STATE = Path(os.environ.get("FRACTAL_SLURM_STATE", "/var/lib/fractal-slurm"))
WORKER_PYTHON = str(STATE / "worker-python" / "bin" / "python")
RUNNER_SOURCE = str(REPO / "services" / "runner")
SUBFOLDER = "1_noop"
#: 1 cpu and 100 MB per call; at most 2 calls side by side per job and 4 jobs: the 8 CPUs of
#: the test node busy, and in-job queues beyond 8 calls.
CONFIG = {
    "default_slurm_config": {"partition": "main", "cpus_per_task": 1, "mem": "100M"},
    "batching_config": {
        "target_cpus_per_job": 1,
        "max_cpus_per_job": 2,
        "target_mem_per_job": "1G",
        "max_mem_per_job": "2G",
        "target_num_jobs": 2,
        "max_num_jobs": 4,
    },
}


class Workspace:
    """The runner's folder (root's, readable) and the user's folder, per measured task."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fractal-slurm-bench-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config = self.root / "slurm.json"
        self.config.write_text(json.dumps(CONFIG))
        self._n = 0

    def dirs(self) -> tuple[Path, Path]:
        self._n += 1
        local = self.root / f"local{self._n}"
        (local / SUBFOLDER).mkdir(parents=True, mode=0o755)
        local.chmod(0o755)
        user = self.root / f"user{self._n}"
        user.mkdir()
        entry = pwd.getpwnam(USER)
        os.chown(user, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
        return local, user

    def close(self) -> None:
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def _calls(local: Path, n: int) -> list[TaskCall]:
    return [
        TaskCall("/bin/true", {"zarr_url": f"/z/{i}"}, CallPaths.build(local, SUBFOLDER, p))
        for i, p in ((i, parallel_prefix(1, i)) for i in range(n))
    ]


def _executor(ws: Workspace, poller: SlurmPoller) -> SlurmSudoExecutor:
    local, user = ws.dirs()
    return SlurmSudoExecutor(
        commands=poller.commands,
        poller=poller,
        config_file=ws.config,
        local_dir=local,
        user_dir=user,
        worker_python=WORKER_PYTHON,
        worker_env={"PYTHONPATH": RUNNER_SOURCE},
    )


def expected_jobs(config_file: Path, n: int) -> int:
    """The number of SLURM jobs the batching heuristics give for ``n`` calls."""
    config = task_slurm_config(load_slurm_config_file(config_file), None, task_name="noop")
    tasks_per_job, _ = batching_heuristics(
        tot_tasks=n,
        tasks_per_job=None,
        parallel_tasks_per_job=None,
        cpus_per_task=config.cpus_per_task,
        mem_per_task=config.mem_per_task_mb,
        limits=BatchingLimits(
            target_cpus_per_job=config.target_cpus_per_job,
            max_cpus_per_job=config.max_cpus_per_job,
            target_mem_per_job=config.target_mem_per_job,
            max_mem_per_job=config.max_mem_per_job,
            target_num_jobs=config.target_num_jobs,
            max_num_jobs=config.max_num_jobs,
        ),
    )
    return -(-n // tasks_per_job)


def _commands(calls: SchedulerCalls) -> SlurmCommands:
    return SlurmCommands(cluster="fractal", user=USER, calls=calls, sudo_user=USER)


async def bench_calls(ws: Workspace, n: int, runs: int, interval: float) -> dict[str, Any]:
    """``runs`` parallel tasks of ``n`` calls each, at once, through one poller."""
    calls = SchedulerCalls()
    poller = SlurmPoller(_commands(calls), interval=interval)
    executors = [_executor(ws, poller) for _ in range(runs)]
    started = time.perf_counter()
    try:
        results = await asyncio.gather(*(e.run_calls(_calls(e.local_dir, n)) for e in executors))
    finally:
        await poller.close()
    seconds = time.perf_counter() - started
    assert all(len(r) == n for r in results)
    minutes = seconds / 60
    counts = {k: calls.count(k) for k in ("sbatch", "squeue", "sacct")}
    return {
        "images": n,
        "runs": runs,
        "seconds": round(seconds, 2),
        "expected_sbatch": expected_jobs(ws.config, n) * runs,
        **counts,
        "poll_rounds": poller.rounds,
        "squeue_per_interval": round(counts["squeue"] / max(seconds / interval, 1e-9), 3),
        "per_minute": {k: round(v / minutes, 1) for k, v in counts.items()},
        # the reference: one squeue per 5 s per running job (all jobs at once at best)
        "reference_squeue_per_minute": round(60 / 5 * expected_jobs(ws.config, n) * runs, 1),
        "_scripts": sorted(
            str(p) for e in executors[:1] for p in (e.local_dir / SUBFOLDER).glob("*.sbatch")
        ),
    }


def _sbatch_wait(scripts: list[str]) -> float:
    """Submit the scripts at once with ``sbatch --wait``; seconds until the last one ended."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["sudo", "-n", "-u", USER, "sbatch", "--wait", "--parsable", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for script in scripts
    ]
    for proc in procs:
        proc.wait()
    return time.perf_counter() - started


async def bench_overhead(ws: Workspace, interval: float, repeat: int) -> dict[str, Any]:
    ours, bare = [], []
    for _ in range(repeat):
        calls = SchedulerCalls()
        poller = SlurmPoller(_commands(calls), interval=interval)
        executor = _executor(ws, poller)
        started = time.perf_counter()
        try:
            await executor.run_calls(_calls(executor.local_dir, 1))
        finally:
            await poller.close()
        ours.append(time.perf_counter() - started)
        (script,) = (executor.local_dir / SUBFOLDER).glob("*.sbatch")
        bare.append(await asyncio.to_thread(_sbatch_wait, [str(script)]))
    return {
        "interval": interval,
        "ours_seconds": [round(x, 3) for x in ours],
        "bare_sbatch_wait_seconds": [round(x, 3) for x in bare],
        "overhead_seconds_median": round(statistics.median(ours) - statistics.median(bare), 3),
    }


async def run(images: list[int], runs: int, interval: float, repeat: int) -> dict[str, Any]:
    ws = Workspace()
    try:
        out: dict[str, Any] = {"interval": interval, "calls": []}
        out["overhead_one_call"] = await bench_overhead(ws, interval, repeat)
        for n in images:
            result = await bench_calls(ws, n, runs, interval)
            scripts = result.pop("_scripts")
            if n == images[0]:
                by_hand = await asyncio.to_thread(_sbatch_wait, scripts)
                one_run = await bench_calls(ws, n, 1, interval)
                one_run.pop("_scripts")
                out["by_hand"] = {
                    "images": n,
                    "ours_seconds": one_run["seconds"],
                    "by_hand_seconds": round(by_hand, 2),
                    "ratio": round(one_run["seconds"] / by_hand, 3),
                }
            out["calls"].append(result)
            print(json.dumps(result), flush=True)
        return out
    finally:
        ws.close()


async def section(quick: bool) -> dict[str, Any]:
    """The ``slurm`` section of ``bench.run`` (1,000 and 10,000 images; 200 when ``quick``)."""
    if shutil.which("sbatch") is None:
        return {"error": "no SLURM here (make cluster)"}
    images = [200] if quick else [1_000, 10_000]
    return await run(images, runs=2, interval=1.0, repeat=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slurm_bench", description=__doc__)
    parser.add_argument("--images", default="1000,10000")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    images = [int(x) for x in args.images.split(",") if x]
    result = asyncio.run(run(images, args.runs, args.interval, args.repeat))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
