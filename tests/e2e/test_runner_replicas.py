"""Two runner replicas on one deployment (DESIGN §9): each run executes on exactly one replica,
a stop reaches the replica that runs the job, and the runs of a replica that dies are resumed by
another once their lease expires.

The stack's runner keeps the default lease (30 s); the second runner, started here on its own
address, has a short one (``FRACTAL_RUNNER_LEASE_SECONDS``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import asyncpg
import psutil
from e2e_stack import Stack, start_service, wait_serving
from test_e2e import Scenario, command

from fractal.v2 import job_pb2, job_service_pb2
from fractal_devstack.embedded import free_port
from helpers import ApiClient, history_status
from waiting import wait_until

LEASE_SECONDS = 4.0
STOPPED = "JOB ERROR in Fractal job {}:\nTRACEBACK:\nJob stopped by user request."


@asynccontextmanager
async def second_runner(stack: Stack, folder: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A second runner process on the stack's env, its log in ``folder/runner.log``; stopped
    (SIGTERM) at the end unless already gone."""
    folder.mkdir()
    env = {
        **stack.env,
        "FRACTAL_RUNNER_ADDRESS": f"127.0.0.1:{free_port()}",
        "FRACTAL_RUNNER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "FRACTAL_RUNNER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    proc = start_service("runner", env, folder)
    try:
        await asyncio.to_thread(wait_serving, "runner", env["FRACTAL_RUNNER_ADDRESS"], proc, folder)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 15)


async def run_of(stack: Stack, job_id: int) -> tuple[int, str]:
    """(pid of the owner process, status) of the job's run, from the runner schema."""
    url = stack.env["FRACTAL_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT owner, status FROM runner.runs WHERE job_id = $1", job_id)
    finally:
        await conn.close()
    assert row is not None and row["owner"] is not None, row
    # owner: hostname-pid-random
    return int(row["owner"].rsplit("-", 2)[1]), row["status"]


def executed_by(job_id: int, *logs: str) -> list[int]:
    """Indices of the logs of the runners that started executing the job."""
    pattern = re.compile(rf"\bjob {job_id}: executing\b")
    return [i for i, text in enumerate(logs) if pattern.search(text)]


async def submit(s: Scenario) -> int:
    resp = await s.c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=s.pid, workflow_id=s.wid, dataset_id=s.did),
        metadata=s.c.md,
    )
    return resp.job.id


async def test_a_job_runs_on_one_replica_and_its_stop_reaches_it(
    e2e_admin: ApiClient, stack: Stack, tmp_path: Path
) -> None:
    """Two jobs, two replicas: each job executes on one replica (its task processes are that
    replica's children, its run is that replica's); StopJob kills them and ends them FAILED,
    whichever replica holds them and whichever replica gets the durable stop command."""
    async with second_runner(stack, tmp_path / "second") as second:
        runners = [stack.processes["runner"].pid, second.pid]
        jobs = []
        for i in range(2):
            s = await Scenario(await e2e_admin.new_user(), str(tmp_path / f"zarr{i}")).setup()
            pid_file = tmp_path / f"pids{i}.json"
            await s.add_task(
                "spawner",
                command_non_parallel=command("spawning_task.py"),
                args_np={"sleep_seconds": 300, "pid_file": str(pid_file)},
            )
            jobs.append((s, await submit(s), pid_file))

        procs: list[psutil.Process] = []
        for _, job_id, pid_file in jobs:
            await wait_until(written(pid_file), timeout=30.0, poll=0.05)
            pids = json.loads(pid_file.read_text())
            owner, status = await run_of(stack, job_id)
            assert owner in runners and status == "running"
            assert psutil.Process(pids["task_pid"]).ppid() == owner
            logs = (stack.log("runner"), (tmp_path / "second" / "runner.log").read_text())
            assert executed_by(job_id, *logs) == [runners.index(owner)]
            procs += [psutil.Process(pid) for pid in pids.values()]

        for s, job_id, _ in jobs:
            await s.c.jobs.StopJob(
                job_service_pb2.StopJobRequest(project_id=s.pid, job_id=job_id),
                metadata=s.c.md,
            )
        for s, job_id, _ in jobs:
            job = await asyncio.wait_for(s.watch(job_id), 30)
            assert job.status == job_pb2.JOB_STATUS_FAILED
            assert job.log == STOPPED.format(job_id)
        _, alive = await asyncio.to_thread(psutil.wait_procs, procs, 10)
        assert not alive


async def test_a_dead_replica_s_run_is_resumed_by_another(
    e2e_admin: ApiClient, stack: Stack, tmp_path: Path
) -> None:
    """The job runs on the second runner (the stack's runner is down while it is submitted).
    The stack's runner comes back and leaves the live run alone; the second runner is killed
    (SIGKILL); the stack's runner resumes the run once its lease expires, and the job ends DONE
    with its first task applied once."""
    zarr_dir = str(tmp_path / "zarr")
    marker, pid_file = tmp_path / "started-once", tmp_path / "sleeper.pid"
    code = (
        "import os, sys, time\n"
        f"marker, pid_file = {str(marker)!r}, {str(pid_file)!r}\n"
        "if os.path.exists(marker): sys.exit(0)\n"
        "open(pid_file + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(pid_file + '.tmp', pid_file)\n"
        "open(marker, 'w').close()\n"
        "time.sleep(600)\n"
    )
    s = await Scenario(await e2e_admin.new_user(), zarr_dir).setup()
    await s.add_task("insert", command_non_parallel=command("dummy_insert_single_image.py"))
    await s.add_task("sleeper", command_non_parallel=python_command(code))

    stack_runner = stack.processes["runner"]
    os.killpg(stack_runner.pid, signal.SIGTERM)
    await asyncio.to_thread(stack_runner.wait, 15)
    sleeper_pid = None
    try:
        async with second_runner(stack, tmp_path / "second") as second:
            job_id = await submit(s)
            await wait_until(pid_file.exists, timeout=30.0, poll=0.05)
            sleeper_pid = int(pid_file.read_text())
            assert await run_of(stack, job_id) == (second.pid, "running")

            await asyncio.to_thread(start_stack_runner, stack)
            # Longer than the lease: the live run stays where it is (its lease is renewed).
            await asyncio.sleep(LEASE_SECONDS + 0.2)
            assert await run_of(stack, job_id) == (second.pid, "running")
            assert psutil.pid_exists(sleeper_pid)

            os.killpg(second.pid, signal.SIGKILL)
            await asyncio.to_thread(second.wait, 15)
            job = await asyncio.wait_for(s.watch(job_id), 30)
    finally:
        if stack.processes["runner"].poll() is not None:
            await asyncio.to_thread(start_stack_runner, stack)
        if sleeper_pid is not None:  # the crashed runner's task process: an orphan now
            with suppress(ProcessLookupError):
                os.kill(sleeper_pid, signal.SIGKILL)

    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert "SKIP 0-th task (name=insert): already applied" in job.log
    assert [t.state for t in job.task_statuses] == [job_pb2.TASK_STATE_DONE] * 2
    assert [history_status(h.status) for h in (await s.dataset()).history] == ["done", "done"]
    assert list(await s.images()) == [f"{zarr_dir}/new_image"]
    assert await run_of(stack, job_id) == (stack.processes["runner"].pid, "finished")
    assert f"job {job_id}: resuming its unfinished run" in stack.log("runner")


def start_stack_runner(stack: Stack) -> None:
    stack.processes["runner"] = start_service("runner", stack.env, stack.logs)
    wait_serving(
        "runner", stack.env["FRACTAL_RUNNER_ADDRESS"], stack.processes["runner"], stack.logs
    )


def python_command(code: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def written(path: Path) -> Callable[[], bool]:
    return lambda: path.exists() and bool(path.read_text().strip())
