"""Per-task progress of jobs, as clients see it (GetJob, WatchJob): task states, call counts
(also across a runner restart), queued vs started, and light WatchJob messages.

A runner of this module's own (module scope: it is gone before other modules start theirs), the
api in this process, real PostgreSQL, NATS and task subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_runner_execution import (
    JOB_TIMEOUT,
    Runner,
    World,
    create_task,
    image,
    mock,
    python_command,
)

from fractal.v2 import dataset_service_pb2, job_pb2, job_service_pb2, workflow_service_pb2
from fractal_grpc.settings import RunnerSettings
from fractal_runner.app import RunnerApp
from helpers import ApiClient

PENDING = job_pb2.TASK_STATE_PENDING
RUNNING = job_pb2.TASK_STATE_RUNNING
DONE = job_pb2.TASK_STATE_DONE
FAILED = job_pb2.TASK_STATE_FAILED


@pytest.fixture(scope="module")
async def runner(service_env: dict[str, str], api_internal_address: str) -> AsyncIterator[Runner]:
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    settings = RunnerSettings(
        **env, runner_address="127.0.0.1:0", api_url=api_internal_address, grace_seconds=0.5
    )
    app = RunnerApp(settings)
    handle = Runner(settings, app, await app.start())
    yield handle
    await handle.app.stop()


@pytest.fixture
async def world(user: ApiClient, tmp_path: Path, runner: Runner) -> World:
    project = await user.new_project()
    zarr_dir = str(tmp_path / "zarr")
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="ds", zarr_dir=zarr_dir
        ),
        metadata=user.md,
    )
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=user.md,
    )
    return World(user, project.id, ds.dataset.id, wf.workflow.id, zarr_dir)


def gated_task(gate: Path, runs: Path, open_names: set[str]) -> str:
    """A parallel task: appends its image's name to ``runs`` (one line per run), then ends at
    once for an image in ``open_names`` and otherwise waits until ``gate`` exists."""
    code = (
        "import json, os, sys, time\n"
        "args = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))\n"
        "name = os.path.basename(args['zarr_url'])\n"
        f"open({str(runs)!r}, 'a').write(name + '\\n')\n"
        f"if name not in {sorted(open_names)!r}:\n"
        f"    while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
    )
    return python_command(code)


def counts(status: job_pb2.JobTaskStatus) -> tuple[int, int, int, int]:
    return (status.state, status.calls_done, status.calls_failed, status.calls_total)


class Watch:
    """Every message of one WatchJob stream, read in the background."""

    def __init__(self, world: World, job_id: int) -> None:
        self.messages: list[job_pb2.Job] = []
        self._stream = world.client.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(project_id=world.project_id, job_id=job_id),
            metadata=world.client.md,
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for resp in self._stream:
            self.messages.append(resp.job)

    async def until(self, condition: Callable[[job_pb2.Job], bool], timeout: float = 15) -> None:
        async def wait() -> None:
            while not any(condition(m) for m in self.messages):
                assert not self._task.done(), f"stream ended: {self.messages[-1:]}"
                await asyncio.sleep(0.02)

        await asyncio.wait_for(wait(), timeout)

    async def end(self) -> job_pb2.Job:
        await asyncio.wait_for(self._task, JOB_TIMEOUT)
        return self.messages[-1]


async def get_job(world: World, job_id: int) -> job_pb2.Job:
    resp = await world.client.jobs.GetJob(
        job_service_pb2.GetJobRequest(project_id=world.project_id, job_id=job_id),
        metadata=world.client.md,
    )
    return resp.job


async def test_counts_grow_while_a_parallel_task_runs(world: World, tmp_path: Path) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    names = [f"img{i}" for i in range(6)]
    first = await create_task(world.client, "first", non_parallel=mock("generic_task.py"))
    par = await create_task(
        world.client, "Gated Task (par)", parallel=gated_task(gate, runs, set(names[:3]))
    )
    wft_first = await world.add_task(first)
    wft_par = await world.add_task(par, meta_parallel={"parallel_tasks_per_job": 6})
    await world.add_images(*[image(f"{world.zarr_dir}/{n}") for n in names])

    job = await world.submit()
    assert [(t.workflow_task_id, t.order, t.task_name) for t in job.task_statuses] == [
        (wft_first, 0, "first"),
        (wft_par, 1, "Gated Task (par)"),
    ]
    assert [counts(t) for t in job.task_statuses] == [(PENDING, 0, 0, 0)] * 2

    watch = Watch(world, job.id)
    await watch.until(lambda m: counts(m.task_statuses[1])[1:] == (3, 0, 6))
    now = await get_job(world, job.id)
    assert now.started and now.HasField("started_time")
    assert now.status == job_pb2.JOB_STATUS_SUBMITTED
    assert [counts(t) for t in now.task_statuses] == [(DONE, 1, 0, 1), (RUNNING, 3, 0, 6)]
    assert Path(now.working_dir, "1_gated_task__par_").is_dir()  # sanitize_string

    gate.touch()
    end = await watch.end()
    assert end.status == job_pb2.JOB_STATUS_DONE, end.log
    assert [counts(t) for t in end.task_statuses] == [(DONE, 1, 0, 1), (DONE, 6, 0, 6)]
    assert sorted(runs.read_text().split()) == names

    # Light messages: the dumps only in the first, the log only once it is there (the end).
    first_msg, *later = watch.messages
    assert first_msg.workflow_dump.fields and first_msg.dataset_dump.fields
    assert later, "no change was streamed"
    for msg in later:
        assert not msg.HasField("project_dump")
        assert not msg.HasField("workflow_dump")
        assert not msg.HasField("dataset_dump")
    assert [bool(m.log) for m in later] == [False] * (len(later) - 1) + [True]
    versions = [m.version for m in watch.messages]
    assert versions == sorted(set(versions))
    # GetJob still has everything.
    full = await get_job(world, job.id)
    assert full.workflow_dump.fields and full.log == end.log


async def test_a_failing_call_is_counted_and_later_tasks_stay_pending(world: World) -> None:
    code = (
        "import json, os, sys\n"
        "args = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))\n"
        "sys.exit(1 if args['zarr_url'].endswith('/c') else 0)\n"
    )
    par = await create_task(world.client, "sometimes", parallel=python_command(code))
    after = await create_task(world.client, "after", non_parallel=mock("generic_task.py"))
    await world.add_task(par, meta_parallel={"parallel_tasks_per_job": 1})
    await world.add_task(after)
    await world.add_images(*[image(f"{world.zarr_dir}/{n}") for n in "abcd"])

    end = await world.run()
    assert end.status == job_pb2.JOB_STATUS_FAILED
    # a, b done; c failed; d never started (the executor stops at the first failure).
    assert [counts(t) for t in end.task_statuses] == [(FAILED, 2, 1, 4), (PENDING, 0, 0, 0)]
    assert end.started


async def test_compound_task_counts_its_init_call_and_then_its_items(world: World) -> None:
    compound = await create_task(
        world.client,
        "create_ome_zarr_compound",
        non_parallel=mock("create_ome_zarr_compound_init.py"),
        parallel=mock("create_ome_zarr_compound_compute.py"),
    )
    await world.add_task(
        compound,
        args_non_parallel={"image_dir": "/tmp/input_images", "num_images": 3},
    )
    end = await world.run()
    assert end.status == job_pb2.JOB_STATUS_DONE, end.log
    assert [counts(t) for t in end.task_statuses] == [(DONE, 4, 0, 4)]


async def test_queued_job_is_not_started_and_counts_survive_a_restart(
    world: World, runner: Runner, tmp_path: Path
) -> None:
    """With the runner down the job is queued (started false, every task pending). Then a task
    whose first two calls completed before a restart: the resumed run reports them done at
    once (their completion records), runs only the others, and ends with 4 of 4, not 6."""
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    par = await create_task(world.client, "gated", parallel=gated_task(gate, runs, {"a", "b"}))
    await world.add_task(par, meta_parallel={"parallel_tasks_per_job": 4})
    await world.add_images(*[image(f"{world.zarr_dir}/{n}") for n in "abcd"])

    await runner.app.stop()
    try:
        job = await world.submit()
        await asyncio.sleep(0.5)
        queued = await get_job(world, job.id)
        assert not queued.started and not queued.HasField("started_time")
        assert [counts(t) for t in queued.task_statuses] == [(PENDING, 0, 0, 0)]
    finally:
        await runner.restart_after_stop()

    watch = Watch(world, job.id)
    await watch.until(lambda m: counts(m.task_statuses[0]) == (RUNNING, 2, 0, 4))
    await runner.app.stop()  # kills the two waiting calls; their records never get written
    try:
        interrupted = await get_job(world, job.id)
        assert interrupted.status == job_pb2.JOB_STATUS_SUBMITTED
        assert counts(interrupted.task_statuses[0]) == (RUNNING, 2, 0, 4)
        gate.touch()
    finally:
        await runner.restart_after_stop()

    end = await watch.end()
    assert end.status == job_pb2.JOB_STATUS_DONE, end.log
    assert [counts(t) for t in end.task_statuses] == [(DONE, 4, 0, 4)]
    # No message ever showed fewer calls than an earlier one (restarts included).
    seen = [counts(m.task_statuses[0])[1:] for m in watch.messages]
    assert all(
        all(x <= y for x, y in zip(a, b, strict=True)) for a, b in zip(seen, seen[1:], strict=False)
    ), seen
    assert (RUNNING, 2, 0, 4) in [counts(m.task_statuses[0]) for m in watch.messages]
    # a and b ran once; c and d twice (interrupted, then run again).
    assert sorted(runs.read_text().split()) == ["a", "b", "c", "c", "d", "d"]
