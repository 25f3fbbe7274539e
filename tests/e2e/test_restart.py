"""Fault injection: the runner dies in the middle of a job; a new runner finishes it."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from e2e_stack import restart_runner
from test_e2e import Scenario, command

from fractal.v2 import job_pb2, job_service_pb2
from helpers import ApiClient
from waiting import is_gone, wait_until


async def test_job_survives_a_runner_crash(
    e2e_admin: ApiClient, stack: Any, tmp_path: Path
) -> None:
    zarr_dir = str(tmp_path / "zarr")
    s = await Scenario(await e2e_admin.new_user(), zarr_dir).setup()
    await s.add_task("insert", command_non_parallel=command("dummy_insert_single_image.py"))
    await s.add_task(
        "slow", command_non_parallel=command("generic_task.py"), args_np={"sleep_seconds": 1.5}
    )
    submitted = await s.c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=s.pid, workflow_id=s.wid, dataset_id=s.did),
        metadata=s.c.md,
    )
    job_id = submitted.job.id
    # Wait until the first task is applied and the second one is running.
    for _ in range(400):
        got = await s.c.jobs.GetJob(
            job_service_pb2.GetJobRequest(project_id=s.pid, job_id=job_id), metadata=s.c.md
        )
        statuses = [t.status for t in got.job.task_statuses]
        slow_log = Path(got.job.working_dir) / "1_slow" / "1.log"
        if statuses[:1] == ["done"] and slow_log.exists():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the job did not reach its second task: {got.job}")
    await asyncio.to_thread(restart_runner, stack, signal.SIGKILL)
    job = await s.watch(job_id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert [t.status for t in job.task_statuses] == ["done", "done"]
    # The first task ran once (no duplicate history), the second was run again to completion.
    dataset = await s.dataset()
    assert [h.status for h in dataset.history] == ["done", "done"]
    assert list(await s.images()) == [f"{zarr_dir}/new_image"]
    assert "resumed" in stack.log("runner")


async def test_a_crashed_runners_task_processes_are_killed_before_the_task_runs_again(
    e2e_admin: ApiClient, stack: Any, tmp_path: Path
) -> None:
    """Task processes live in their own sessions, so they outlive a SIGKILLed runner; the
    runner that resumes the job kills them (and their children) before it runs the task
    again, instead of letting two runs of one task write side by side."""
    pid_file, marker = tmp_path / "pids.json", tmp_path / "marker"
    s = await Scenario(await e2e_admin.new_user(), str(tmp_path / "zarr")).setup()
    await s.add_task(
        "spawn",
        command_non_parallel=command("spawning_task.py"),
        args_np={"pid_file": str(pid_file), "marker_file": str(marker), "sleep_seconds": 600},
    )
    submitted = await s.c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=s.pid, workflow_id=s.wid, dataset_id=s.did),
        metadata=s.c.md,
    )
    for _ in range(500):
        if pid_file.exists():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the task did not start")
    pids = json.loads(pid_file.read_text())
    await asyncio.to_thread(restart_runner, stack, signal.SIGKILL)
    job = await s.watch(submitted.job.id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    await wait_until(lambda: is_gone(pids["task_pid"]) and is_gone(pids["child_pid"]), 5.0, 0.05)
    assert "leftover task process" in stack.log("runner")
