"""Fault injection: the runner dies in the middle of a job; a new runner finishes it."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from e2e_stack import restart_runner, start_service, wait_serving
from test_e2e import Scenario, command

from fractal.v2 import (
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient, history_status
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
        statuses = [job_pb2.TaskState.Name(t.state) for t in got.job.task_statuses]
        slow_log = Path(got.job.working_dir) / "1_slow" / "1.log"
        if statuses[:1] == ["TASK_STATE_DONE"] and slow_log.exists():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the job did not reach its second task: {got.job}")
    await asyncio.to_thread(restart_runner, stack, signal.SIGKILL)
    job = await s.watch(job_id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert [t.state for t in job.task_statuses] == [job_pb2.TASK_STATE_DONE] * 2
    # The first task ran once (no duplicate history), the second was run again to completion.
    dataset = await s.dataset()
    assert [history_status(h.status) for h in dataset.history] == ["done", "done"]
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


def counting_task(counter: Path) -> str:
    """A parallel task call: appends its zarr_url to ``counter``, works for a while, then
    reports its image with an attribute."""
    code = (
        "import json, sys, time\n"
        "args = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))\n"
        f"open({str(counter)!r}, 'a').write(args['zarr_url'] + '\\n')\n"
        "time.sleep(0.5)\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "update = {'zarr_url': args['zarr_url'], 'attributes': {'seen': 1}}\n"
        "json.dump({'image_list_updates': [update]}, open(out, 'w'))\n"
    )
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


async def test_calls_completed_before_a_runner_crash_never_run_again(
    e2e_admin: ApiClient, stack: Any, tmp_path: Path
) -> None:
    """Per-call resume: the runner is killed (SIGKILL) in the middle of a parallel task; the
    resumed job runs only the calls that had not completed (each in-flight call at most once
    more), and every image carries the task's output once."""
    zarr_dir = str(tmp_path / "zarr")
    counter = tmp_path / "invocations"
    s = await Scenario(await e2e_admin.new_user(), zarr_dir).setup()
    urls = [f"{zarr_dir}/plate.zarr/A/{i:02d}/0" for i in range(10)]
    await s.c.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=s.pid, dataset_id=s.did, images=[image_pb2.Image(zarr_url=u) for u in urls]
        ),
        metadata=s.c.md,
    )
    task = await s.c.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="count", source=f"count-{s.pid}", command_parallel=counting_task(counter)
        ),
        metadata=s.c.md,
    )
    req = workflow_service_pb2.CreateWorkflowTaskRequest(
        project_id=s.pid, workflow_id=s.wid, task_id=task.task.id
    )
    req.meta_parallel.update({"parallel_tasks_per_job": 2})
    await s.c.workflows.CreateWorkflowTask(req, metadata=s.c.md)
    submitted = await s.c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=s.pid, workflow_id=s.wid, dataset_id=s.did),
        metadata=s.c.md,
    )
    task_dir = Path(submitted.job.working_dir) / "0_count"

    def records() -> set[str]:
        return {p.name for p in task_dir.glob("*.done.json")} if task_dir.exists() else set()

    await wait_until(lambda: len(records()) >= 3, 60, 0.02)
    old = stack.processes["runner"]
    os.killpg(old.pid, signal.SIGKILL)
    await asyncio.to_thread(old.wait, 30)
    completed = records()  # nothing records a completion while no runner runs
    assert 3 <= len(completed) < len(urls)
    stack.processes["runner"] = start_service("runner", stack.env, stack.logs)
    wait_serving(
        "runner", stack.env["FRACTAL_RUNNER_ADDRESS"], stack.processes["runner"], stack.logs
    )

    job = await s.watch(submitted.job.id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    # The progress counts each call once, whatever ran twice.
    (progress,) = job.task_statuses
    assert (progress.state, progress.calls_done, progress.calls_failed, progress.calls_total) == (
        job_pb2.TASK_STATE_DONE,
        len(urls),
        0,
        len(urls),
    )
    runs = Counter(counter.read_text().split())
    assert set(runs) == set(urls)
    for i, url in enumerate(urls):
        if f"0_par_{i:07d}.done.json" in completed:
            assert runs[url] == 1, f"{url} completed before the crash and ran again"
        else:  # not started, or in flight at the crash: at most once more
            assert runs[url] <= 2, url
    # At most the calls in flight (two at a time) ran twice.
    assert sum(1 for n in runs.values() if n == 2) <= 2, runs
    images = await s.images()
    assert all(images[url]["attributes"] == {"seen": 1} for url in urls)
    assert [history_status(h.status) for h in (await s.dataset()).history] == ["done"]
