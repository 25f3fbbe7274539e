"""SLURM benchmark: scheduler calls and the runner's own overhead, on the cluster of deploy/local.

``python -m bench.slurm_bench [--only overhead,by_hand,calls] [--images 1000] [--runs 3]
[--interval 1.0] [--window SECONDS [--window-from N]] [--json FILE]``

It drives the runner's SLURM executor (``SlurmSudoExecutor``, submitting as the cluster user
with ``sudo -u``) and its shared poller directly, without the rest of the stack. The task is a
tiny shell script honouring the task contract (``--args-json A --out-json B``: it checks that A
is readable and writes no output), run by the real worker in one ``srun`` step per call, so what
is measured is SLURM and our machinery, not a task. The config file gives 1 cpu and 50 MB per
call and at most 2 jobs of 2 cpus per task, so the heuristics' last branch puts N/2 calls in each
job in 2 in-job lanes (4 of the node's 8 cpus per run).

- **overhead** (a): 1 task, 1 image: submit → outcome read, against the same script submitted
  by hand (``sbatch``, then ``squeue`` every interval until the job has left it: the comparable
  baseline) and against the bare ``sbatch --wait`` of the issue (which looks at the job 2 s
  after submitting, then after 8 s more: a floor of 2 s, not a turnaround). Turns ABC, median.
- **by_hand** (b): one task of N images (N = the first of ``--images``), ours against the SAME
  batch scripts submitted by hand with the same batching: sbatch one after the other, then one
  ``squeue --jobs=…`` every interval until none is listed. Ours and by hand take turns (ABAB,
  ``--rounds`` each); medians and their ratio. Goal ≤ 1.1.
- **calls**: for each N of ``--images``, ``--runs`` such tasks at once through one poller:
  sbatch, squeue, sacct calls (totals and per minute, from the runner's
  ``fractal_runner_scheduler_calls_total`` counts); the heuristics' job count against the
  sbatch calls; squeue calls per poll interval (and the most in any one interval); sacct calls
  asking about an id the poller's latest squeue still listed (goal 0, checked from the squeue
  answers themselves, not from the poller's logic); the reference's rule (one squeue per 5 s
  per running job) over the same job lifetimes, and at our interval. With ``--window S`` the
  tasks of N ≥ ``--window-from`` images are stopped (scancel) after S seconds and the counts are
  those of the window (``completed: false``, ``calls_done_in_window``).

Every section records the load average and the SLURM jobs of others seen while it ran (the
cluster and the 2 cores are shared). Results go to ``bench/results/slurm-<UTC>.json`` (or
``--json``). Needs the cluster up (``make cluster``) and root (sudo to the cluster user).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fractal_runner.slurm.batching import BatchingLimits, batching_heuristics
from fractal_runner.slurm.config_file import load_slurm_config_file
from fractal_runner.slurm.job_end import parse_squeue
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import CommandResult, SchedulerCalls, SlurmCommands
from fractal_runner.slurm.sudo_executor import SlurmSudoExecutor
from fractal_runner.slurm.task_config import task_slurm_config
from fractal_runner.taskproc.calls import JobStopped, TaskCall
from fractal_runner.taskproc.layout import CallPaths, parallel_prefix

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
USER = os.environ.get("FRACTAL_SLURM_USER", "fractal-worker")
CLUSTER = "fractal"
STATE = Path(os.environ.get("FRACTAL_SLURM_STATE", "/var/lib/fractal-slurm"))
WORKER_PYTHON = str(STATE / "worker-python" / "bin" / "python")
RUNNER_SOURCE = str(REPO / "services" / "runner")
SUBFOLDER = "1_noop"
SCHEDULER_KINDS = ("sbatch", "squeue", "sacct", "scancel")
#: 1 cpu and 50 MB per call; at most 2 jobs of 2 cpus per task: N/2 calls per job in 2 lanes.
CONFIG = {
    "default_slurm_config": {"partition": "main", "cpus_per_task": 1, "mem": "50M"},
    "batching_config": {
        "target_cpus_per_job": 2,
        "max_cpus_per_job": 2,
        "target_mem_per_job": "200M",
        "max_mem_per_job": "400M",
        "target_num_jobs": 2,
        "max_num_jobs": 2,
    },
}
#: The task: the contract's two options, the arguments file readable, no output written.
NOOP_TASK = """#!/bin/sh
# A task that does nothing, by the task contract: --args-json FILE --out-json FILE.
[ "$1" = --args-json ] && [ -r "$2" ] && [ "$3" = --out-json ] || {
    echo "usage: $0 --args-json FILE --out-json FILE" >&2
    exit 2
}
exit 0
"""


class Workspace:
    """The runner's folder (root's, readable) and the user's folder, per measured task."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fractal-slurm-bench-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config = self.root / "slurm.json"
        self.config.write_text(json.dumps(CONFIG))
        self.task = self.root / "noop_task.sh"
        self.task.write_text(NOOP_TASK)
        self.task.chmod(0o755)
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


@dataclass
class Recorded:
    """One scheduler call as the poller and the executor made it (``at``: when squeue and sacct
    were asked, when sbatch answered)."""

    at: float
    kind: str
    ids: tuple[str, ...] = ()
    listed: frozenset[str] = frozenset()  # squeue: the ids its answer listed


class RecordingCommands(SlurmCommands):
    """The runner's SlurmCommands, keeping each call's time, ids and (squeue) answer, so the
    goals are checked from what SLURM answered, not from the poller's own reasoning."""

    def __init__(self, calls: SchedulerCalls) -> None:
        super().__init__(cluster=CLUSTER, user=USER, calls=calls, sudo_user=USER)
        self.log: list[Recorded] = []
        self.submitted: dict[str, float] = {}

    async def run(
        self,
        argv: Sequence[str],
        *,
        n_ids: int = 0,
        as_user: bool = False,
        command: str | None = None,
    ) -> CommandResult:
        asked = time.perf_counter()
        result = await super().run(argv, n_ids=n_ids, as_user=as_user, command=command)
        kind, now = command or argv[0], time.perf_counter()
        if kind in ("squeue", "sacct"):  # when asked (the poller's cadence)
            ids = _jobs_option(argv)
            listed: frozenset[str] = frozenset()
            if kind == "squeue" and result.returncode == 0:
                listed = frozenset(parse_squeue(result.stdout))
            self.log.append(Recorded(asked, kind, ids, listed))
        elif kind == "sbatch":
            job_id = result.stdout.strip().split(";")[0]
            self.submitted[job_id] = now
            self.log.append(Recorded(now, kind, (job_id,)))
        elif kind == "scancel":
            self.log.append(Recorded(now, kind, tuple(argv[1:])))
        return result


def _gaps(times: Sequence[float]) -> dict[str, float | None]:
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    if not gaps:
        return {"min": None, "median": None, "max": None}
    return {
        "min": round(min(gaps), 3),
        "median": round(statistics.median(gaps), 3),
        "max": round(max(gaps), 3),
    }


def _jobs_option(argv: Sequence[str]) -> tuple[str, ...]:
    for arg in argv:
        if arg.startswith("--jobs="):
            return tuple(arg.removeprefix("--jobs=").split(","))
    return ()


def call_checks(log: Sequence[Recorded], interval: float) -> dict[str, Any]:
    """From the recorded calls: sacct calls (and ids) asking about a job the latest squeue
    still listed, squeue calls per poll interval (windows of ``interval`` from the first), and
    per job the seconds from its sbatch to the sacct that last asked about it."""
    latest_listed: frozenset[str] = frozenset()
    sacct_while_listed = sacct_ids_while_listed = sacct_ids = 0
    squeue_times: list[float] = []
    last_sacct: dict[str, float] = {}
    submitted: dict[str, float] = {}
    for call in log:
        if call.kind == "squeue":
            latest_listed = call.listed
            squeue_times.append(call.at)
        elif call.kind == "sacct":
            sacct_ids += len(call.ids)
            still = [i for i in call.ids if i in latest_listed]
            sacct_ids_while_listed += len(still)
            sacct_while_listed += bool(still)
            for job_id in call.ids:
                last_sacct[job_id] = call.at
        elif call.kind == "sbatch":
            submitted[call.ids[0]] = call.at
    per_window: Counter[int] = Counter()
    windows = 0
    if squeue_times:
        first = grid_start(squeue_times, interval)
        windows = int((squeue_times[-1] - first) // interval) + 1
        hits = Counter(int((t - first) // interval) for t in squeue_times)
        per_window = Counter(hits.get(w, 0) for w in range(windows))
    lifetimes = [last_sacct[j] - t for j, t in submitted.items() if j in last_sacct]
    return {
        "sacct_ids": sacct_ids,
        "sacct_calls_while_squeue_listed": sacct_while_listed,
        "sacct_ids_while_squeue_listed": sacct_ids_while_listed,
        # the intervals from the first squeue to the last, by how many squeue calls each had
        "squeue_intervals_by_calls": {str(k): v for k, v in sorted(per_window.items())},
        "squeue_per_interval_while_watching": round(len(squeue_times) / max(windows, 1), 3),
        "squeue_max_in_one_interval": max(per_window, default=0),
        "squeue_gaps_seconds": _gaps(squeue_times),
        "job_seconds": lifetimes,
    }


def grid_start(times: Sequence[float], interval: float) -> float:
    """Where the poller's grid of ``interval`` windows starts, seen from the call times: rounds
    are due on a grid and start at or a little after their time, so the phases of the calls
    (modulo the interval) form one cluster on the circle; the grid starts where that cluster
    does (just after the widest empty arc). Windows anchored on the first call instead would
    count its own lateness as a second call in the window of every earlier-phased one."""
    first = times[0]
    phases = sorted((t - first) % interval for t in times)
    arcs = [(b - a, b) for a, b in zip(phases, phases[1:], strict=False)]
    arcs.append((phases[0] + interval - phases[-1], phases[0]))  # the arc across 0
    _, start = max(arcs)
    return first + start - interval - 1e-9


class Surroundings:
    """Samples, every few seconds while a section runs, the load average and the SLURM jobs
    that are not ours (the cluster and the cores are shared)."""

    def __init__(self, ours: set[str], every: float = 5.0) -> None:
        self.ours = ours
        self.every = every
        self.loads: list[float] = []
        self.others: set[str] = set()
        self.other_most = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Surroundings:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _sample(self) -> None:
        while True:
            self.loads.append(os.getloadavg()[0])
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                process = await asyncio.create_subprocess_exec(
                    "squeue", "--noheader", "--format=%i", stdout=asyncio.subprocess.PIPE
                )
                out, _ = await process.communicate()
                jobs = {line.strip() for line in out.decode().splitlines() if line.strip()}
                others = jobs - self.ours
                self.others |= others
                self.other_most = max(self.other_most, len(others))
            await asyncio.sleep(self.every)

    def summary(self) -> dict[str, Any]:
        return {
            "load_average_1min": {
                "min": round(min(self.loads, default=0.0), 2),
                "median": round(statistics.median(self.loads), 2) if self.loads else None,
                "max": round(max(self.loads, default=0.0), 2),
            },
            "other_slurm_jobs_seen": len(self.others),
            "other_slurm_jobs_at_once_max": self.other_most,
        }


def _calls(ws: Workspace, local: Path, n: int) -> list[TaskCall]:
    return [
        TaskCall(str(ws.task), {"zarr_url": f"/z/{i}"}, CallPaths.build(local, SUBFOLDER, p))
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


def _outcomes(executor: SlurmSudoExecutor) -> int:
    """How many of the executor's calls have an outcome file in the user's folder."""
    return sum(1 for _ in (executor.user_dir / SUBFOLDER).glob("*_out.pickle"))


def _scripts(executor: SlurmSudoExecutor) -> list[str]:
    return sorted(str(p) for p in (executor.local_dir / SUBFOLDER).glob("*.sbatch"))


def heuristics(config_file: Path, n: int) -> dict[str, int]:
    """The batching heuristics' split of ``n`` calls: jobs, calls per job, lanes per job."""
    config = task_slurm_config(load_slurm_config_file(config_file), None, task_name="noop")
    tasks_per_job, parallel = batching_heuristics(
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
    return {
        "jobs": -(-n // tasks_per_job),
        "tasks_per_job": tasks_per_job,
        "parallel_tasks_per_job": parallel,
        "max_num_jobs": config.max_num_jobs,
    }


@dataclass(frozen=True)
class OursRun:
    """One task through a fresh poller: its time, scripts, job ids, and where the time went:
    ``prepare`` (start to the first sbatch: input files and scripts written) and ``collect``
    (the sacct that saw the last job end to the outcomes read, files copied back)."""

    seconds: float
    scripts: list[str]
    job_ids: list[str]
    prepare: float
    collect: float
    counts: dict[str, int]


async def ours_once(ws: Workspace, n: int, interval: float) -> OursRun:
    """One task of ``n`` calls through a fresh poller (what a runner does for one task)."""
    commands = RecordingCommands(SchedulerCalls())
    poller = SlurmPoller(commands, interval=interval)
    executor = _executor(ws, poller)
    started = time.perf_counter()
    try:
        results = await executor.run_calls(_calls(ws, executor.local_dir, n))
    finally:
        await poller.close()
    ended = time.perf_counter()
    assert len(results) == n
    first_sbatch = min(c.at for c in commands.log if c.kind == "sbatch")
    last_sacct = max(c.at for c in commands.log if c.kind == "sacct")
    return OursRun(
        seconds=ended - started,
        scripts=_scripts(executor),
        job_ids=list(executor.submitted_job_ids),
        prepare=first_sbatch - started,
        collect=ended - last_sacct,
        counts={k: commands.calls.count(k) for k in SCHEDULER_KINDS},
    )


async def by_hand_once(scripts: Sequence[str], interval: float) -> tuple[float, list[str]]:
    """The scripts submitted by hand: sbatch one after the other, then one squeue for all every
    ``interval`` until none is listed (what the runner does, minus the runner)."""
    started = time.perf_counter()
    ids = []
    for script in scripts:
        out = await _run(["sudo", "-n", "-u", USER, "sbatch", "--parsable", script])
        ids.append(out.strip().split(";")[0])
    while True:
        await asyncio.sleep(interval)
        squeue = ["squeue", "--noheader", "--format=%i|%T", f"--jobs={','.join(ids)}"]
        with contextlib.suppress(RuntimeError):  # squeue failed: ask again, as we do
            if not parse_squeue(await _run(squeue)):
                break
    return time.perf_counter() - started, ids


async def sbatch_wait_once(script: str) -> tuple[float, str]:
    """``sbatch --wait`` of the script: seconds until it returned."""
    started = time.perf_counter()
    out = await _run(["sudo", "-n", "-u", USER, "sbatch", "--wait", "--parsable", script])
    return time.perf_counter() - started, out.strip().split(";")[0]


async def _run(argv: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0:6]} exited {process.returncode}: {err.decode()[:500]}")
    return out.decode()


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


async def bench_overhead(ws: Workspace, interval: float, repeat: int) -> dict[str, Any]:
    """(a) 1 task, 1 image; ours, by hand with squeue, bare ``sbatch --wait``, in turns."""
    ours: list[float] = []
    by_hand: list[float] = []
    bare: list[float] = []
    own: list[tuple[float, float]] = []
    ids: set[str] = set()
    async with Surroundings(ids) as around:
        for _ in range(repeat):
            one = await ours_once(ws, 1, interval)
            ours.append(one.seconds)
            own.append((one.prepare, one.collect))
            ids.update(one.job_ids)
            (script,) = one.scripts
            seconds, job_ids = await by_hand_once([script], interval)
            by_hand.append(seconds)
            ids.update(job_ids)
            seconds, job_id = await sbatch_wait_once(script)
            bare.append(seconds)
            ids.add(job_id)
    return {
        "interval": interval,
        "ours_seconds": [round(x, 3) for x in ours],
        "by_hand_squeue_seconds": [round(x, 3) for x in by_hand],
        "bare_sbatch_wait_seconds": [round(x, 3) for x in bare],
        "overhead_vs_by_hand_median": round(_median(ours) - _median(by_hand), 3),
        "overhead_vs_sbatch_wait_median": round(_median(ours) - _median(bare), 3),
        # the parts of ours outside the poll cadence: start → sbatch, last sacct → outcome read
        "ours_prepare_seconds": [round(p, 3) for p, _ in own],
        "ours_collect_seconds": [round(c, 3) for _, c in own],
        "ours_prepare_plus_collect_median": _median([p + c for p, c in own]),
        **around.summary(),
    }


async def bench_by_hand(ws: Workspace, n: int, interval: float, rounds: int) -> dict[str, Any]:
    """(b) one task of ``n`` images, ours and the same scripts by hand, ABAB."""
    ours: list[OursRun] = []
    by_hand: list[float] = []
    ids: set[str] = set()
    async with Surroundings(ids) as around:
        for _ in range(rounds):
            one = await ours_once(ws, n, interval)
            ours.append(one)
            ids.update(one.job_ids)
            print(f"  by_hand: ours {one.seconds:.2f} s ({len(one.scripts)} jobs)", flush=True)
            seconds, job_ids = await by_hand_once(one.scripts, interval)
            by_hand.append(seconds)
            ids.update(job_ids)
            print(f"  by_hand: by hand {seconds:.2f} s", flush=True)
    return {
        "images": n,
        "interval": interval,
        "batching": heuristics(ws.config, n),
        "order": "ABAB (A ours, B by hand)",
        "ours_seconds": [round(x.seconds, 2) for x in ours],
        "by_hand_seconds": [round(x, 2) for x in by_hand],
        "ours_median": _median([x.seconds for x in ours]),
        "by_hand_median": _median(by_hand),
        "ratio": round(statistics.median(x.seconds for x in ours) / statistics.median(by_hand), 3),
        "ours_prepare_seconds": [round(x.prepare, 2) for x in ours],
        "ours_collect_seconds": [round(x.collect, 2) for x in ours],
        "ours_scheduler_calls": [x.counts for x in ours],
        **around.summary(),
    }


async def bench_calls(
    ws: Workspace, n: int, runs: int, interval: float, window: float | None
) -> dict[str, Any]:
    """``runs`` tasks of ``n`` calls each, at once, through one poller (module docstring)."""
    calls = SchedulerCalls()
    commands = RecordingCommands(calls)
    poller = SlurmPoller(commands, interval=interval)
    executors = [_executor(ws, poller) for _ in range(runs)]
    ids: set[str] = set()
    started = time.perf_counter()
    stopped = False
    done_calls = 0
    async with Surroundings(ids) as around:
        tasks = [asyncio.create_task(e.run_calls(_calls(ws, e.local_dir, n))) for e in executors]
        try:
            done, _ = await asyncio.wait(tasks, timeout=window)
            if len(done) < len(tasks):  # the window is over: counts so far, then stop
                stopped = True
                seconds = time.perf_counter() - started
                counts = {k: calls.count(k) for k in SCHEDULER_KINDS}
                log = list(commands.log)
                done_calls = sum(_outcomes(e) for e in executors)
                await asyncio.gather(*(e.cancel() for e in executors))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await poller.close()
            ids.update(commands.submitted)
    if not stopped:
        seconds = time.perf_counter() - started
        counts = {k: calls.count(k) for k in SCHEDULER_KINDS}
        log = list(commands.log)
    # a run that failed is reported with the counts, not lost with them
    failed = [
        f"run {i}: {type(r).__name__}: {r}"
        for i, r in enumerate(results)
        if isinstance(r, BaseException) and not (stopped and isinstance(r, JobStopped))
    ]
    assert all(len(r) == n for r in results if not isinstance(r, BaseException))
    split = heuristics(ws.config, n)
    checks = call_checks(log, interval)
    job_seconds = checks.pop("job_seconds")
    minutes = seconds / 60
    return {
        "images": n,
        "runs": runs,
        "interval": interval,
        "completed": not stopped and not failed,
        "failed_runs": failed,
        "window_seconds": round(seconds, 2) if stopped else None,
        # stopped: the calls whose outcome the worker had written when the window ended
        "calls_done_in_window": done_calls if stopped else None,
        "seconds": round(seconds, 2),
        "batching": split,
        "expected_sbatch": split["jobs"] * runs,
        **counts,
        "poll_rounds": poller.rounds,
        "squeue_per_interval": round(counts["squeue"] / max(seconds / interval, 1e-9), 3),
        **checks,
        "per_minute": {k: round(counts[k] / minutes, 1) for k in ("sbatch", "squeue", "sacct")},
        # the reference: one squeue per 5 s per running job, over the same job lifetimes
        "reference_squeue_estimate": round(sum(job_seconds) / 5),
        # the same rule at our interval (what the reference would call with interval=ours)
        "reference_squeue_estimate_at_interval": round(sum(job_seconds) / interval),
        "job_seconds_median": round(statistics.median(job_seconds), 1) if job_seconds else None,
        **around.summary(),
    }


async def run(
    only: Sequence[str],
    images: list[int],
    runs: int,
    interval: float,
    repeat: int,
    rounds: int,
    window: float | None,
    window_from: int = 0,
) -> dict[str, Any]:
    ws = Workspace()
    out: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "interval": interval,
        "config": CONFIG,
        "cpus": os.cpu_count(),
    }
    try:
        if "overhead" in only:
            print("[overhead]", flush=True)
            out["overhead_one_call"] = await bench_overhead(ws, interval, repeat)
            print(json.dumps(out["overhead_one_call"]), flush=True)
        if "by_hand" in only:
            print("[by_hand]", flush=True)
            out["by_hand"] = await bench_by_hand(ws, images[0], interval, rounds)
            print(json.dumps(out["by_hand"]), flush=True)
        if "calls" in only:
            out["calls"] = []
            for n in images:
                print(f"[calls {n} x {runs}]", flush=True)
                bounded = window if n >= window_from else None
                result = await bench_calls(ws, n, runs, interval, bounded)
                out["calls"].append(result)
                print(json.dumps(result), flush=True)
    finally:
        ws.close()
        out["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out


def _commit() -> str | None:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


async def section(quick: bool) -> dict[str, Any]:
    """The ``slurm`` section of ``bench.run``: 1,000 images, and 10,000 over a 540 s window (a
    whole 10,000-call task takes ~45 min on the shared 2 cores); 200 when ``quick``."""
    if shutil.which("sbatch") is None:
        return {"error": "no SLURM here (make cluster)"}
    images = [200] if quick else [1_000, 10_000]
    return await run(
        ("overhead", "by_hand", "calls"),
        images,
        runs=2,
        interval=1.0,
        repeat=3,
        rounds=1 if quick else 2,
        window=None if quick else 540.0,
        window_from=10_000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slurm_bench", description=__doc__)
    parser.add_argument("--only", default="overhead,by_hand,calls")
    parser.add_argument("--images", default="1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5, help="overhead: turns")
    parser.add_argument("--rounds", type=int, default=2, help="by_hand: ABAB rounds")
    parser.add_argument("--window", type=float, help="calls: stop after this many seconds")
    parser.add_argument("--window-from", type=int, default=0, help="calls: window from N images")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    images = [int(x) for x in args.images.split(",") if x]
    only = [x for x in args.only.split(",") if x]
    result = asyncio.run(
        run(
            only,
            images,
            args.runs,
            args.interval,
            args.repeat,
            args.rounds,
            args.window,
            args.window_from,
        )
    )
    text = json.dumps(result, indent=2)
    path = args.json
    if path is None:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"slurm-{stamp}.json"
    path.write_text(text + "\n")
    print(text)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
