"""The runner executing jobs end to end: a RunnerApp in this process, the api in this process,
real PostgreSQL, NATS and task subprocesses (the mock task package), driven through the public
API only."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, update

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_devstack.embedded import free_port
from fractal_grpc.auth.tokens import ServiceTokenSource
from fractal_grpc.convert import filters_to_dict
from fractal_grpc.db import make_engine, make_sessionmaker, transaction
from fractal_grpc.retry import RetryPolicy
from fractal_grpc.settings import RunnerSettings
from fractal_runner.api_client import JobExecutionClient, open_channel
from fractal_runner.app import RunnerApp
from fractal_runner.attempts import MAX_UNEXPECTED_ATTEMPTS
from fractal_runner.leases import Instance, LeaseConfig
from fractal_runner.models import Run, RunStatus
from fractal_runner.readiness import API_SERVICE, api_problem
from fractal_runner.run_store import RunStore
from fractal_runner.scheduler import JobScheduler
from golden import GOLDEN_TYPE_FILTERS, golden_images
from helpers import ApiClient, history_status, images_by_url
from waiting import is_gone, wait_for_file, wait_until, wait_until_async

MOCK = Path(__file__).resolve().parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"
PYTHON = shlex.quote(sys.executable)
JOB_TIMEOUT = 20.0


def mock(script: str) -> str:
    return f"{PYTHON} {shlex.quote(str(MOCK / script))}"


def python_command(code: str) -> str:
    """A task command running inline code (it receives --args-json/--out-json in sys.argv)."""
    return f"{PYTHON} -c {shlex.quote(code)}"


# --- the runner -------------------------------------------------------------------------


@dataclass
class Runner:
    """The runner of this test session; ``restart()`` replaces it (graceful stop, new start)."""

    settings: RunnerSettings
    app: RunnerApp
    port: int

    async def restart_after_stop(self) -> None:
        self.app = RunnerApp(self.settings)
        self.port = await self.app.start()


@pytest.fixture(scope="session")
async def runner(service_env: dict[str, str], api_internal_address: str) -> AsyncIterator[Runner]:
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    settings = RunnerSettings(
        **env, runner_address="127.0.0.1:0", api_url=api_internal_address, grace_seconds=0.5
    )
    app = RunnerApp(settings)
    port = await app.start()
    handle = Runner(settings, app, port)
    yield handle
    await handle.app.stop()


# --- building the world through the public API -------------------------------------------


def struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def create_task(
    client: ApiClient,
    name: str,
    *,
    non_parallel: str | None = None,
    parallel: str | None = None,
    input_types: dict[str, bool] | None = None,
    output_types: dict[str, bool] | None = None,
) -> int:
    req = task_service_pb2.CreateTaskRequest(
        name=name,
        source=f"{name}-{time.monotonic_ns()}",
        input_types=input_types or {},
        output_types=output_types or {},
    )
    if non_parallel is not None:
        req.command_non_parallel = non_parallel
    if parallel is not None:
        req.command_parallel = parallel
    resp = await client.tasks.CreateTask(req, metadata=client.md)
    return resp.task.id


async def create_sleep_once_task(client: ApiClient, tmp_path: Path) -> tuple[int, Path, Path]:
    """A task that, on its first run, writes its pid file (atomically), then a marker file, then
    sleeps 600 s; run again (the marker exists), it ends at once. Returns the task id and the
    marker and pid file paths."""
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
    task_id = await create_task(client, "sleeper", non_parallel=python_command(code))
    return task_id, marker, pid_file


@dataclass
class World:
    """A project with one dataset (zarr_dir under tmp_path) and one workflow."""

    client: ApiClient
    project_id: int
    dataset_id: int
    workflow_id: int
    zarr_dir: str

    async def add_task(
        self,
        task_id: int,
        *,
        args_non_parallel: dict[str, Any] | None = None,
        args_parallel: dict[str, Any] | None = None,
        meta_parallel: dict[str, Any] | None = None,
    ) -> int:
        req = workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=self.project_id, workflow_id=self.workflow_id, task_id=task_id
        )
        if args_non_parallel:
            req.args_non_parallel.update(args_non_parallel)
        if args_parallel:
            req.args_parallel.update(args_parallel)
        if meta_parallel:
            req.meta_parallel.update(meta_parallel)
        resp = await self.client.workflows.CreateWorkflowTask(req, metadata=self.client.md)
        return resp.workflow_task.id

    async def add_images(self, *images: image_pb2.Image) -> None:
        await self.client.images.AddImages(
            image_service_pb2.AddImagesRequest(
                project_id=self.project_id, dataset_id=self.dataset_id, images=images
            ),
            metadata=self.client.md,
        )

    async def submit(self, **kw: int) -> job_pb2.Job:
        resp = await self.client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.project_id,
                workflow_id=self.workflow_id,
                dataset_id=self.dataset_id,
                **kw,  # type: ignore[arg-type]
            ),
            metadata=self.client.md,
        )
        return resp.job

    async def wait(self, job_id: int, timeout: float = JOB_TIMEOUT) -> job_pb2.Job:
        """Watch the job until it ends."""

        async def watch() -> job_pb2.Job:
            last = None
            stream = self.client.jobs.WatchJob(
                job_service_pb2.WatchJobRequest(project_id=self.project_id, job_id=job_id),
                metadata=self.client.md,
            )
            async for resp in stream:
                last = resp.job
                if last.status in (job_pb2.JOB_STATUS_DONE, job_pb2.JOB_STATUS_FAILED):
                    return last
            raise AssertionError(f"watch ended without a terminal state: {last}")

        return await asyncio.wait_for(watch(), timeout)

    async def run(self, **kw: int) -> job_pb2.Job:
        job = await self.submit(**kw)
        return await self.wait(job.id)

    async def images(self) -> dict[str, dict[str, Any]]:
        resp = await self.client.images.QueryImages(
            image_service_pb2.QueryImagesRequest(
                project_id=self.project_id, dataset_id=self.dataset_id, page_size=1000
            ),
            metadata=self.client.md,
        )
        return images_by_url(resp.images)

    async def dataset(self) -> Any:
        resp = await self.client.datasets.GetDataset(
            dataset_service_pb2.GetDatasetRequest(
                project_id=self.project_id, dataset_id=self.dataset_id
            ),
            metadata=self.client.md,
        )
        return resp.dataset

    async def history(self) -> list[tuple[int, str]]:
        """(order, status) of each history item of the dataset."""
        dataset = await self.dataset()
        return [
            (
                int(json_format.MessageToDict(item.workflowtask)["order"]),
                history_status(item.status),
            )
            for item in dataset.history
        ]


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


def image(url: str, **types: bool) -> image_pb2.Image:
    return image_pb2.Image(zarr_url=url, types=types)


@pytest.fixture(scope="module")
async def runs(database_url: str) -> AsyncIterator[RunStore]:
    engine = make_engine(database_url, pool_size=1)
    yield RunStore(make_sessionmaker(engine))
    await engine.dispose()


# --- tests ------------------------------------------------------------------------------


async def test_runner_serves_health_once_it_has_reached_the_api(runner: Runner) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            resp = await health.Check(health_pb2.HealthCheckRequest())
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_readiness_names_what_keeps_the_runner_from_the_api(
    runner: Runner, api_address: str, api_internal_address: str
) -> None:
    """api's internal listener; nothing at the address; gRPC servers that are not it (api's
    public listener, the runner's own port: health, but no JobExecutionService)."""
    closed = f"127.0.0.1:{free_port()}"
    cases = {
        api_internal_address: None,
        closed: "UNAVAILABLE",
        api_address: "NOT_FOUND",
        f"127.0.0.1:{runner.port}": "NOT_FOUND",
    }
    for address, expected in cases.items():
        async with grpc.aio.insecure_channel(address) as channel:
            problem = await api_problem(channel, deadline=10)
        if expected is None:
            assert problem is None
        elif expected == "UNAVAILABLE":
            assert problem is not None and problem.startswith("UNAVAILABLE: "), problem
        else:
            assert problem == f"the server there does not serve {API_SERVICE}"


async def test_golden_scenario(world: World, tmp_path: Path) -> None:
    """Reference §11: create_ome_zarr_compound → illumination_correction → MIP_compound."""
    create = await create_task(
        world.client,
        "create_ome_zarr_compound",
        non_parallel=mock("create_ome_zarr_compound_init.py"),
        parallel=mock("create_ome_zarr_compound_compute.py"),
    )
    illumination = await create_task(
        world.client,
        "illumination_correction",
        parallel=mock("illumination_correction.py"),
        input_types={"illumination_correction": False},
        output_types={"illumination_correction": True},
    )
    mip = await create_task(
        world.client,
        "MIP_compound",
        non_parallel=mock("MIP_compound_init.py"),
        parallel=mock("MIP_compound_compute.py"),
        input_types={"3D": True},
        output_types={"3D": False},
    )
    image_dir = str(tmp_path / "images")
    wftask_ids = [
        await world.add_task(create, args_non_parallel={"image_dir": image_dir}),
        await world.add_task(illumination, args_parallel={"overwrite_input": True}),
        await world.add_task(mip),
    ]

    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert "END 2-th task (name=MIP_compound)" in job.log

    z = world.zarr_dir
    plate = f"{z}/my_plate.zarr"
    mip_plate = f"{z}/my_plate_mip.zarr"
    assert await world.images() == golden_images(z)
    dataset = await world.dataset()
    assert filters_to_dict(dataset.filters) == {
        "attributes": {},
        "types": GOLDEN_TYPE_FILTERS,
    }
    assert await world.history() == [(0, "done"), (1, "done"), (2, "done")]

    # The job folder (reference §5.9) and the exact task arguments (§5.4).
    job_dir = Path(job.working_dir)
    assert sorted(p.name for p in job_dir.iterdir()) == [
        "0_create_ome_zarr_compound",
        "1_illumination_correction",
        "2_mip_compound",
        "history.json",
        "workflow.log",
    ]
    history = json.loads((job_dir / "history.json").read_text())
    assert [item["workflowtask"]["id"] for item in history] == wftask_ids
    assert all(item["status"] == "done" for item in history)

    def args(folder: str, prefix: str) -> Any:
        return json.loads((job_dir / folder / f"{prefix}.args.json").read_text())

    assert args("0_create_ome_zarr_compound", "0") == {
        "image_dir": image_dir,
        "zarr_urls": [],
        "zarr_dir": z,
    }
    assert args("0_create_ome_zarr_compound", "0_par_0000001") == {
        "zarr_url": f"{plate}/A/02/0",
        "init_args": {"image_dir": image_dir},
    }
    assert args("1_illumination_correction", "1_par_0000000") == {
        "overwrite_input": True,
        "zarr_url": f"{plate}/A/01/0",
    }
    assert not (job_dir / "1_illumination_correction" / "1_par_0000000.metadiff.json").exists()
    assert args("2_mip_compound", "2") == {
        "zarr_urls": [f"{plate}/A/01/0", f"{plate}/A/02/0"],
        "zarr_dir": z,
    }
    assert args("2_mip_compound", "2_par_0000000") == {
        "zarr_url": f"{plate}/A/01/0",
        "init_args": {"new_zarr_url": f"{mip_plate}/A/01/0"},
    }
    assert sorted(p.name for p in (job_dir / "2_mip_compound").iterdir()) == sorted(
        f"{prefix}.{suffix}"
        for prefix in ("2", "2_par_0000000", "2_par_0000001")
        # The reference's three files per call, and the runner's completion record.
        for suffix in ("args.json", "log", "metadiff.json", "done.json")
    )


async def test_task_error_keeps_earlier_results(world: World) -> None:
    ok = await create_task(
        world.client, "mark", non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    failing = await create_task(world.client, "fail here", non_parallel=mock("generic_task.py"))
    await world.add_task(ok)
    await world.add_task(failing, args_non_parallel={"raise_error": True})
    await world.add_images(image(f"{world.zarr_dir}/a"), image(f"{world.zarr_dir}/b"))

    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(
        "TASK ERROR: Task name: fail here, position in Workflow: 1\nTRACEBACK:\n"
    )
    assert "generic_task: failing on purpose (raise_error=True)" in job.log
    # The first task's result stays applied; the failed task is in the history.
    images = await world.images()
    assert {url: img["types"] for url, img in images.items()} == {
        f"{world.zarr_dir}/a": {"marked": True},
        f"{world.zarr_dir}/b": {"marked": True},
    }
    assert filters_to_dict((await world.dataset()).filters)["types"] == {"marked": True}
    assert await world.history() == [(0, "done"), (1, "failed")]
    history = json.loads((Path(job.working_dir) / "history.json").read_text())
    assert [item["workflowtask"]["order"] for item in history] == [0]


@pytest.mark.parametrize(
    ("switch", "expected"),
    [("write_garbage", "is not valid JSON"), ("invalid_output", "Extra inputs are not permitted")],
)
async def test_invalid_task_output_is_a_job_error(world: World, switch: str, expected: str) -> None:
    task = await create_task(world.client, "generic", non_parallel=mock("generic_task.py"))
    await world.add_task(task, args_non_parallel={switch: True})
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "Validation of task output failed" in job.log
    assert expected in job.log
    assert await world.history() == [(0, "failed")]


async def test_input_types_violation(world: World) -> None:
    task = await create_task(
        world.client, "needs 3D", non_parallel=mock("generic_task.py"), input_types={"3D": True}
    )
    await world.add_task(task)
    await world.add_images(
        image(f"{world.zarr_dir}/a", **{"3D": True}), image(f"{world.zarr_dir}/b")
    )
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "Invalid filtered image list" in job.log
    assert f"Image zarr_url: {world.zarr_dir}/b" in job.log
    assert not (Path(job.working_dir) / "0_needs_3d" / "0.args.json").exists()


async def test_image_rule_breach_is_a_job_error(world: World, tmp_path: Path) -> None:
    """An output that api refuses (a new image outside zarr_dir) fails the job with the rule."""
    out = json.dumps({"image_list_updates": [{"zarr_url": str(tmp_path / "elsewhere")}]})
    code = (
        "import sys\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        f"open(out, 'w').write({out!r})\n"
    )
    task = await create_task(world.client, "escape", non_parallel=python_command(code))
    await world.add_task(task)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "elsewhere" in job.log
    assert await world.images() == {}


async def test_task_slice_and_parallel_edge_cases(world: World) -> None:
    """first/last_task_index run only the slice; a parallel task with no input makes no call
    but its output types still reach the dataset filters."""
    tasks = [
        await create_task(
            world.client,
            f"t{i}",
            non_parallel=mock("generic_task.py"),
            output_types={f"t{i}": True},
        )
        for i in range(3)
    ]
    for task in tasks:
        await world.add_task(task)
    parallel = await create_task(
        world.client,
        "par",
        parallel=mock("generic_task_parallel.py"),
        output_types={"par": True},
    )
    await world.add_task(parallel, meta_parallel={"parallel_tasks_per_job": 1})
    await world.add_images(image(f"{world.zarr_dir}/a"))

    job = await world.run(first_task_index=1, last_task_index=1)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    job_dir = Path(job.working_dir)
    assert sorted(p.name for p in job_dir.iterdir()) == ["1_t1", "history.json", "workflow.log"]
    assert (await world.images())[f"{world.zarr_dir}/a"]["types"] == {"t1": True}
    assert await world.history() == [(1, "done")]

    # The last task alone: inputs filtered by the dataset filters {t1: true} ∪ … → the image
    # runs; then again with a filter that matches nothing → no call at all.
    job = await world.run(first_task_index=3)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert (Path(job.working_dir) / "3_par" / "3_par_0000000.args.json").exists()
    assert (await world.images())[f"{world.zarr_dir}/a"]["types"] == {"t1": True, "par": True}

    await world.add_images(image(f"{world.zarr_dir}/b"))  # not t1: filtered out
    filters = filters_to_dict((await world.dataset()).filters)
    assert filters["types"] == {"t1": True, "par": True}
    job = await world.run(first_task_index=2, last_task_index=2)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    images = await world.images()
    assert images[f"{world.zarr_dir}/b"]["types"] == {}  # not an input: untouched
    assert images[f"{world.zarr_dir}/a"]["types"] == {"t1": True, "par": True, "t2": True}


async def test_parallel_task_without_inputs_makes_no_call(world: World) -> None:
    parallel = await create_task(
        world.client, "par", parallel=mock("generic_task_parallel.py"), output_types={"p": True}
    )
    await world.add_task(parallel)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert list((Path(job.working_dir) / "0_par").iterdir()) == []
    assert filters_to_dict((await world.dataset()).filters)["types"] == {"p": True}


async def test_stop_running_job_kills_its_processes(world: World, tmp_path: Path) -> None:
    task = await create_task(world.client, "spawner", non_parallel=mock("spawning_task.py"))
    pid_file = tmp_path / "pids.json"
    await world.add_task(
        task, args_non_parallel={"pid_file": str(pid_file), "child_new_session": True}
    )
    job = await world.submit()
    await wait_for_file(pid_file)
    pids = json.loads(pid_file.read_text())

    started = time.monotonic()
    await world.client.jobs.StopJob(
        job_service_pb2.StopJobRequest(project_id=world.project_id, job_id=job.id),
        metadata=world.client.md,
    )
    ended = await world.wait(job.id)
    assert time.monotonic() - started < 5
    assert ended.status == job_pb2.JOB_STATUS_FAILED
    assert ended.log == (
        f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\nJob stopped by user request."
    )
    await wait_until(lambda: is_gone(pids["task_pid"]) and is_gone(pids["child_pid"]), 2.0)
    assert await world.history() == [(0, "failed")]


async def test_restart_resumes_unfinished_run(
    world: World, runner: Runner, tmp_path: Path, runs: RunStore
) -> None:
    """A graceful stop kills the running task and leaves the run unfinished; the next start
    resumes it, skipping the task api already applied."""
    first = await create_task(
        world.client, "first", non_parallel=mock("generic_task.py"), output_types={"first": True}
    )
    sleeper, marker, pid_file = await create_sleep_once_task(world.client, tmp_path)
    await world.add_task(first)
    await world.add_task(sleeper)
    await world.add_images(image(f"{world.zarr_dir}/a"))

    job = await world.submit()
    await wait_for_file(marker)
    sleeper_pid = int(pid_file.read_text())

    await runner.app.stop()
    try:
        await wait_until(lambda: is_gone(sleeper_pid))
        run = await runs.get(job.id)
        assert run is not None and run.status == RunStatus.RUNNING and run.attempts == 1
    finally:
        await runner.restart_after_stop()

    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    assert "SKIP 0-th task (name=first): already applied" in ended.log
    assert await world.history() == [(0, "done"), (1, "done")]
    assert (await world.images())[f"{world.zarr_dir}/a"]["types"] == {"first": True}
    history = json.loads((Path(ended.working_dir) / "history.json").read_text())
    assert [item["workflowtask"]["order"] for item in history] == [0, 1]

    async def finished() -> bool:
        run = await runs.get(job.id)
        return run is not None and run.status == RunStatus.FINISHED

    await wait_until_async(finished)
    run = await runs.get(job.id)
    assert run is not None and run.attempts == 2


async def test_stop_of_queued_and_unknown_jobs(
    world: World,
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """With the session runner stopped, a scheduler of one slot: a stop for the job waiting
    for the slot, and for a job the runner never saw, ends each FAILED at once; the running
    job is unaffected until stopped itself. Redelivered submits of ended jobs do nothing."""
    task = await create_task(world.client, "spawner", non_parallel=mock("spawning_task.py"))
    pid_file = tmp_path / "pids.json"
    await world.add_task(task, args_non_parallel={"pid_file": str(pid_file)})

    async def other_dataset(name: str) -> World:
        ds = await world.client.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=world.project_id, name=name, zarr_dir=f"{world.zarr_dir}-{name}"
            ),
            metadata=world.client.md,
        )
        return replace(world, dataset_id=ds.dataset.id)

    await runner.app.stop()
    try:
        running = await world.submit()
        queued = await (await other_dataset("q")).submit()
        unknown = await (await other_dataset("u")).submit()
        tokens = ServiceTokenSource(
            Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text(), service="runner"
        )
        async with open_channel(api_internal_address) as channel:
            scheduler = JobScheduler(runs, JobExecutionClient(channel, tokens), max_jobs=1)
            try:
                await scheduler.submit(running.id)
                await wait_for_file(pid_file)
                await scheduler.submit(queued.id)
                assert scheduler.is_active(queued.id)

                await scheduler.stop(queued.id)
                assert not scheduler.is_active(queued.id)
                for job in (queued, unknown):
                    if job is unknown:
                        await scheduler.stop(unknown.id)
                    ended = await world.wait(job.id)
                    assert ended.status == job_pb2.JOB_STATUS_FAILED
                    assert ended.log == (
                        f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n"
                        "Job stopped by user request."
                    )
                assert not Path(queued.working_dir).exists()
                run = await runs.get(queued.id)
                assert run is not None and run.status == RunStatus.FINISHED
                assert await runs.get(unknown.id) is None

                current = await world.client.jobs.GetJob(
                    job_service_pb2.GetJobRequest(project_id=world.project_id, job_id=running.id),
                    metadata=world.client.md,
                )
                assert current.job.status == job_pb2.JOB_STATUS_SUBMITTED
                await scheduler.stop(running.id)
                ended = await world.wait(running.id)
                assert ended.status == job_pb2.JOB_STATUS_FAILED
                assert "Job stopped by user request." in ended.log
            finally:
                await scheduler.close()
    finally:
        await runner.restart_after_stop()

    # The session runner now consumes the three submit commands: nothing runs again.
    async def all_finished() -> bool:
        found = [await runs.get(job.id) for job in (running, queued, unknown)]
        return all(run is not None and run.status == RunStatus.FINISHED for run in found)

    await wait_until_async(all_finished)
    assert not (Path(unknown.working_dir)).exists()


async def test_api_errors_that_are_not_the_jobs_fault_do_not_fail_it(
    world: World,
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
) -> None:
    """api refuses the runner's calls (here: its service token is signed with a wrong key) on
    attempt after attempt: the job stays SUBMITTED, its run unfinished, however many attempts
    fail; once the calls get through, the job ends DONE. (Before, five failed attempts gave the
    job up as UNKNOWN ERROR.)"""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    task = await create_task(world.client, "ok", non_parallel=python_command("pass"))
    await world.add_task(task)
    wrong_key = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    good = ServiceTokenSource(
        Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text(), service="runner"
    )
    await runner.app.stop()
    try:
        async with open_channel(api_internal_address) as channel:
            scheduler = JobScheduler(
                runs,
                JobExecutionClient(channel, ServiceTokenSource(wrong_key, service="runner")),
                max_jobs=1,
                attempt_backoff=RetryPolicy(first_backoff=0.01, max_backoff=0.05),
            )
            try:
                job = await world.submit()
                await scheduler.submit(job.id)

                async def refused_often() -> bool:
                    run = await runs.get(job.id)
                    return run is not None and run.attempts > MAX_UNEXPECTED_ATTEMPTS + 2

                await wait_until_async(refused_often, 60)
                assert await job_status(world, job.id) == job_pb2.JOB_STATUS_SUBMITTED
                run = await runs.get(job.id)
                assert run is not None and run.status == RunStatus.RUNNING
                assert run.last_error is not None
                assert "UNAUTHENTICATED" in run.last_error
                assert scheduler.is_active(job.id)

                scheduler.api = JobExecutionClient(channel, good)  # the key is fixed
                ended = await world.wait(job.id, timeout=60)
                assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
            finally:
                await scheduler.close()
    finally:
        await runner.restart_after_stop()


# --- several runner replicas (leases on runs) ------------------------------------------------


@asynccontextmanager
async def replicas(
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
    count: int = 2,
) -> AsyncIterator[list[JobScheduler]]:
    """With the session runner stopped, ``count`` schedulers with runner identities of their
    own, as replicas would have (they receive no NATS commands: the test plays them)."""
    await runner.app.stop()
    tokens = ServiceTokenSource(
        Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text(), service="runner"
    )
    try:
        async with open_channel(api_internal_address) as channel:
            api = JobExecutionClient(channel, tokens)
            schedulers = [
                JobScheduler(
                    RunStore(
                        runs.sessions,
                        instance=Instance(owner=f"replica{i}-{time.monotonic_ns()}"),
                        lease=LeaseConfig.of(60),
                    ),
                    api,
                    max_jobs=2,
                )
                for i in range(count)
            ]
            try:
                yield schedulers
            finally:
                for scheduler in schedulers:
                    await scheduler.close()
    finally:
        await runner.restart_after_stop()


async def job_status(world: World, job_id: int) -> job_pb2.JobStatus.ValueType:
    resp = await world.client.jobs.GetJob(
        job_service_pb2.GetJobRequest(project_id=world.project_id, job_id=job_id),
        metadata=world.client.md,
    )
    return resp.job.status


STOPPED_LOG = "JOB ERROR in Fractal job {}:\nTRACEBACK:\nJob stopped by user request."


async def test_replicas_one_run_and_stop_reaches_its_owner(
    world: World,
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A run executes on the replica that claimed it: a redelivered submit, a resume, or the
    durable stop command on another replica leave it alone; the stop broadcast on its owner
    kills its processes and ends it FAILED."""
    task = await create_task(world.client, "spawner", non_parallel=mock("spawning_task.py"))
    pid_file = tmp_path / "pids.json"
    await world.add_task(task, args_non_parallel={"pid_file": str(pid_file)})
    async with replicas(runner, runs, api_internal_address, key_env) as (a, b):
        job = await world.submit()
        await a.submit(job.id)
        await wait_for_file(pid_file)
        pids = json.loads(pid_file.read_text())

        await b.submit(job.id)  # the submit redelivered to the other replica
        assert job.id not in await b.resume()
        assert not b.is_active(job.id)
        await b.stop(job.id)  # the durable stop reached the replica that does not run it
        assert not await b.stop_local(job.id)  # and so did the broadcast
        assert await job_status(world, job.id) == job_pb2.JOB_STATUS_SUBMITTED
        run = await runs.get(job.id)
        assert run is not None and run.owner == a.owner and run.status == RunStatus.RUNNING
        assert not is_gone(pids["task_pid"])

        assert await a.stop_local(job.id)  # the broadcast on the owner
        ended = await world.wait(job.id)
        assert ended.status == job_pb2.JOB_STATUS_FAILED
        assert ended.log == STOPPED_LOG.format(job.id)
        await wait_until(lambda: is_gone(pids["task_pid"]) and is_gone(pids["child_pid"]), 5.0)


async def test_a_missed_stop_is_seen_between_tasks(
    world: World,
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """No replica gets the stop command (here: nobody consumes it): the owner reads
    stop_requested before its next task and ends the job FAILED without running it."""
    started, go, second = tmp_path / "started", tmp_path / "go", tmp_path / "second-ran"
    first = await create_task(
        world.client,
        "waiter",
        non_parallel=python_command(
            "import os, time\n"
            f"open({str(started)!r}, 'w').close()\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        ),
    )
    then = await create_task(
        world.client,
        "second",
        non_parallel=python_command(f"open({str(second)!r}, 'w').close()"),
    )
    await world.add_task(first)
    await world.add_task(then)
    async with replicas(runner, runs, api_internal_address, key_env, count=1) as (a,):
        job = await world.submit()
        await a.submit(job.id)
        await wait_for_file(started)
        await world.client.jobs.StopJob(
            job_service_pb2.StopJobRequest(project_id=world.project_id, job_id=job.id),
            metadata=world.client.md,
        )
        go.touch()
        ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_FAILED
    assert ended.log == STOPPED_LOG.format(job.id)
    assert not second.exists()
    assert await world.history() == [(0, "done"), (1, "failed")]


async def test_a_lost_lease_interrupts_the_execution(
    world: World,
    runner: Runner,
    runs: RunStore,
    api_internal_address: str,
    key_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Another replica took the run over (its lease had expired): the first one kills its
    processes without ending the job, at its next renewal; the new owner finishes it."""
    sleeper, marker, pid_file = await create_sleep_once_task(world.client, tmp_path)
    await world.add_task(sleeper)
    async with replicas(runner, runs, api_internal_address, key_env) as (a, b):
        job = await world.submit()
        await a.submit(job.id)
        await wait_for_file(marker)
        await wait_until(lambda: pid_file.stat().st_size > 0)
        sleeper_pid = int(pid_file.read_text())

        assert not await b.store.claim(job.id)  # a live lease
        async with transaction(runs.sessions) as session:
            await session.execute(
                update(Run).where(Run.job_id == job.id).values(lease_expires_at=func.now())
            )
        assert await b.store.claim(job.id)
        await a.renew_leases()
        assert not a.is_active(job.id)
        await wait_until(lambda: is_gone(sleeper_pid))
        assert await job_status(world, job.id) == job_pb2.JOB_STATUS_SUBMITTED

        await b.submit(job.id)
        ended = await world.wait(job.id)
        assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    run = await runs.get(job.id)
    assert run is not None and run.owner == b.owner and run.attempts == 2


async def test_a_replica_going_down_hands_its_runs_over_at_once(
    world: World, runner: Runner, runs: RunStore, tmp_path: Path
) -> None:
    """A graceful stop releases the leases of the runs it interrupts and tells the other
    replicas: another replica resumes the run at once, not at its next sweep (30 s)."""
    sleeper, marker, pid_file = await create_sleep_once_task(world.client, tmp_path)
    await world.add_task(sleeper)
    await runner.app.stop()
    other = RunnerApp(runner.settings, lease=LeaseConfig.of(30))
    try:
        try:
            await other.start()
            job = await world.submit()  # only the other replica consumes it
            await wait_for_file(marker)
            run = await runs.get(job.id)
            assert run is not None and run.owner == other.instance.owner
        finally:
            await runner.restart_after_stop()
        # The session runner is back and leaves the live run alone.
        run = await runs.get(job.id)
        assert run is not None and run.owner == other.instance.owner
    finally:
        await other.stop()
    ended = await world.wait(job.id, timeout=10)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    run = await runs.get(job.id)
    assert run is not None and run.owner == runner.app.instance.owner and run.attempts == 2


async def test_api_client_retries_while_api_is_unavailable(
    service_env: dict[str, str], key_env: dict[str, str]
) -> None:
    """UNAVAILABLE is retried until api answers (here: a second api started late)."""
    from fractal_api.app import ApiApp
    from fractal_grpc.settings import ApiSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = ServiceTokenSource(
        Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text(), service="runner"
    )
    async with open_channel(f"127.0.0.1:{port}") as channel:
        client = JobExecutionClient(
            channel, tokens, policy=RetryPolicy(first_backoff=0.01, max_backoff=0.05)
        )
        call = asyncio.create_task(client.get_job_spec(10**12))
        await asyncio.sleep(0.3)
        assert not call.done()

        env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
        env.update(api_address="127.0.0.1:0", api_internal_address=f"127.0.0.1:{port}")
        api = ApiApp(ApiSettings(**env, grace_seconds=0.1))
        await api.start()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call, 5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await api.stop()


async def test_dummy_examples(world: World) -> None:
    """Reference ``test_dummy_examples``, with the project's mock tasks through the runner:
    insert a single image, unset an attribute with null, an implicit update on empty output,
    remove images, and a new image outside zarr_dir refused."""
    z = world.zarr_dir
    insert = await create_task(
        world.client, "insert", non_parallel=mock("dummy_insert_single_image.py")
    )
    unset = await create_task(world.client, "unset", non_parallel=mock("dummy_unset_attribute.py"))
    touch = await create_task(
        world.client,
        "touch",
        parallel=mock("generic_task_parallel.py"),
        output_types={"seen": True},
    )
    remove = await create_task(world.client, "remove", non_parallel=mock("dummy_remove_images.py"))
    await world.add_task(insert, args_non_parallel={"attributes": {"well": "A01", "keep": 1}})
    await world.add_task(unset, args_non_parallel={"attribute": "well"})
    await world.add_task(touch)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert await world.images() == {
        f"{z}/new_image": {"origin": None, "attributes": {"keep": 1}, "types": {"seen": True}}
    }
    dataset = await world.dataset()
    assert dict(dataset.filters.types) == {"seen": True}

    # Removing every (filtered) image.
    wf2 = await world.client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=world.project_id, name="wf2"),
        metadata=world.client.md,
    )
    world.workflow_id = wf2.workflow.id
    await world.add_task(remove)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert await world.images() == {}

    # A new image outside zarr_dir fails the job and changes nothing.
    wf3 = await world.client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=world.project_id, name="wf3"),
        metadata=world.client.md,
    )
    world.workflow_id = wf3.workflow.id
    await world.add_task(insert, args_non_parallel={"outside_zarr_dir": True})
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "not a parent directory" in job.log
    assert await world.images() == {}


async def test_a_silent_task_failure_shows_its_exit_code(world: World) -> None:
    """The reference's TRACEBACK is the task's stderr: empty for a task that exits silently.
    Here the job log says how the task ended instead."""
    task = await create_task(
        world.client, "quiet", non_parallel=python_command("import sys; sys.exit(3)")
    )
    await world.add_task(task)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(
        "TASK ERROR: Task name: quiet, position in Workflow: 0\nTRACEBACK:\n"
        "Task process exited with code 3.\nCommand: "
    )


async def test_a_task_killed_by_a_signal_shows_the_signal(world: World) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    task = await create_task(world.client, "killed", non_parallel=python_command(code))
    await world.add_task(task)
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(
        f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n"
        "Task process was terminated by signal SIGKILL (return code -9).\nCommand: "
    )


async def test_parallel_outputs_with_different_filters_are_a_job_error(world: World) -> None:
    """Each parallel call sets a filter of its own image's name: the outputs cannot be merged,
    a JOB ERROR like any invalid output (the reference: UNKNOWN ERROR), and nothing applied."""
    code = (
        "import json, sys\n"
        "args = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "name = args['zarr_url'].rsplit('/', 1)[-1]\n"
        "json.dump({'filters': {'attributes': {'well': name}}}, open(out, 'w'))\n"
    )
    task = await create_task(
        world.client, "own filter", parallel=python_command(code), output_types={"seen": True}
    )
    await world.add_task(task)
    await world.add_images(image(f"{world.zarr_dir}/a"), image(f"{world.zarr_dir}/b"))
    job = await world.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "Parallel task outputs set different filters" in job.log
    assert {url: img["types"] for url, img in (await world.images()).items()} == {
        f"{world.zarr_dir}/a": {},
        f"{world.zarr_dir}/b": {},
    }
    assert filters_to_dict((await world.dataset()).filters)["attributes"] == {}
    assert await world.history() == [(0, "failed")]
