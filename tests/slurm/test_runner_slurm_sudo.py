"""The runner with FRACTAL_RUNNER_BACKEND=slurm_sudo against the real cluster, as the non-root
cluster user: the golden scenario (results identical to the local executor's golden test), a
task exiting non-zero, a stop during a run, and the submit-time checks of the backend."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from slurm_cluster_env import CLUSTER_USER, RUNNER_SOURCE, WORKER_PYTHON

from fractal.v2 import (
    auth_service_pb2,
    dataset_service_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    user_pb2,
    user_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.convert import attributes_to_python
from fractal_grpc.settings import RunnerSettings, SettingsError
from fractal_runner.app import RunnerApp
from golden import GOLDEN_TYPE_FILTERS, golden_images
from helpers import ApiClient, admin_of
from world import RunningApi, delete_streams_async, running_api

MOCK = Path(__file__).resolve().parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"
JOB_TIMEOUT = 120.0
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


def mock(script: str) -> str:
    """A mock task run by the cluster user's Python (the runner's own is not theirs to run)."""
    return f"{shlex.quote(WORKER_PYTHON)} {shlex.quote(str(MOCK / script))}"


@pytest.fixture(scope="module")
def runner_base() -> Iterator[Path]:
    """The runner's working base dir: root's, readable by the cluster user (0755)."""
    path = Path(tempfile.mkdtemp(prefix="fractal-slurm-runner-", dir="/tmp"))
    path.chmod(0o755)
    (path / "slurm.json").write_text(json.dumps(CONFIG))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def slurm_api(
    service_env: dict[str, str], nats_prefix: str, runner_base: Path
) -> AsyncIterator[RunningApi]:
    prefix = f"{nats_prefix}s"
    try:
        async with running_api(
            service_env,
            nats_prefix=prefix,
            runner_backend="slurm_sudo",
            runner_working_base_dir=runner_base / "jobs",
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@pytest.fixture(scope="module")
async def slurm_runner(
    service_env: dict[str, str], nats_prefix: str, slurm_api: RunningApi, runner_base: Path
) -> AsyncIterator[RunnerApp]:
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(
        nats_prefix=f"{nats_prefix}s",
        runner_backend="slurm_sudo",
        runner_working_base_dir=str(runner_base / "jobs"),
    )
    settings = RunnerSettings(
        **env,
        runner_address="127.0.0.1:0",
        api_url=slurm_api.internal_address,
        grace_seconds=0.5,
        slurm_config_file=runner_base / "slurm.json",
        slurm_poll_interval=0.3,
        slurm_worker_python=WORKER_PYTHON,
        slurm_worker_pythonpath=RUNNER_SOURCE,
        slurm_cluster="fractal",
    )
    app = RunnerApp(settings)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="module")
async def slurm_admin(slurm_api: RunningApi) -> AsyncIterator[ApiClient]:
    async with admin_of(slurm_api) as admin:
        yield admin


async def _set_user(admin: ApiClient, user: ApiClient, **fields: Any) -> None:
    current = await user.auth.GetCurrentUser(
        auth_service_pb2.GetCurrentUserRequest(), metadata=user.md
    )
    await admin.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user_id=current.user.id,
            user=user_pb2.User(**fields),
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        ),
        metadata=admin.md,
    )


@dataclass
class World:
    client: ApiClient
    project_id: int
    dataset_id: int
    workflow_id: int
    zarr_dir: str

    async def task(self, name: str, **commands: Any) -> int:
        req = task_service_pb2.CreateTaskRequest(
            name=name,
            source=f"{name}-{time.monotonic_ns()}",
            input_types=commands.pop("input_types", {}),
            output_types=commands.pop("output_types", {}),
            **commands,
        )
        return (await self.client.tasks.CreateTask(req, metadata=self.client.md)).task.id

    async def add(self, task_id: int, **parts: dict[str, Any]) -> int:
        req = workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=self.project_id, workflow_id=self.workflow_id, task_id=task_id
        )
        for name, value in parts.items():
            getattr(req, name).update(value)
        resp = await self.client.workflows.CreateWorkflowTask(req, metadata=self.client.md)
        return resp.workflow_task.id

    async def submit(self) -> job_pb2.Job:
        resp = await self.client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.project_id, workflow_id=self.workflow_id, dataset_id=self.dataset_id
            ),
            metadata=self.client.md,
        )
        return resp.job

    async def get(self, job_id: int) -> job_pb2.Job:
        resp = await self.client.jobs.GetJob(
            job_service_pb2.GetJobRequest(project_id=self.project_id, job_id=job_id),
            metadata=self.client.md,
        )
        return resp.job

    async def wait(self, job_id: int) -> job_pb2.Job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            job = await self.get(job_id)
            if job.status in (job_pb2.JOB_STATUS_DONE, job_pb2.JOB_STATUS_FAILED):
                return job
            await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end within {JOB_TIMEOUT} s")

    async def images(self) -> dict[str, dict[str, Any]]:
        resp = await self.client.images.QueryImages(
            image_service_pb2.QueryImagesRequest(
                project_id=self.project_id, dataset_id=self.dataset_id, page_size=1000
            ),
            metadata=self.client.md,
        )
        return {
            image.zarr_url: {
                "origin": image.origin if image.HasField("origin") else None,
                "attributes": attributes_to_python(image.attributes),
                "types": dict(image.types),
            }
            for image in resp.images
        }


async def _world(client: ApiClient, zarr_dir: str) -> World:
    project = await client.new_project()
    ds = await client.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="ds", zarr_dir=zarr_dir
        ),
        metadata=client.md,
    )
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=client.md,
    )
    return World(client, project.id, ds.dataset.id, wf.workflow.id, zarr_dir)


@pytest.fixture
async def world(slurm_admin: ApiClient, slurm_runner: RunnerApp, job_dir: Path) -> World:
    """A user running as the cluster user, cache_dir and zarr_dir in the cluster user's folder."""
    user = await slurm_admin.new_user(verified=True)
    await _set_user(slurm_admin, user, slurm_user=CLUSTER_USER, cache_dir=str(job_dir / "cache"))
    subprocess.run(["sudo", "-u", CLUSTER_USER, "mkdir", "-p", str(job_dir / "cache")], check=True)
    return await _world(user, str(job_dir / "zarr"))


def _sacct_comments(tag_prefix: str, since: str) -> list[str]:
    """SLURM jobs whose tag starts with ``tag_prefix`` since ``since`` (job ids restart with
    each test database)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", f"--starttime={since}", "--format=JobID,Comment,User"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if f"|{tag_prefix}" in line]


def _squeue() -> str:
    return subprocess.run(
        ["squeue", "-h", "-u", CLUSTER_USER, "--format=%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def test_golden_scenario_on_slurm_sudo(world: World, slurm_runner: RunnerApp) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    assert slurm_runner.slurm is not None
    sbatch_before = slurm_runner.slurm.calls.count("sbatch", user=CLUSTER_USER)
    create = await world.task(
        "create_ome_zarr_compound",
        command_non_parallel=mock("create_ome_zarr_compound_init.py"),
        command_parallel=mock("create_ome_zarr_compound_compute.py"),
    )
    illumination = await world.task(
        "illumination_correction",
        command_parallel=mock("illumination_correction.py"),
        input_types={"illumination_correction": False},
        output_types={"illumination_correction": True},
    )
    mip = await world.task(
        "MIP_compound",
        command_non_parallel=mock("MIP_compound_init.py"),
        command_parallel=mock("MIP_compound_compute.py"),
        input_types={"3D": True},
        output_types={"3D": False},
    )
    await world.add(create, args_non_parallel={"image_dir": "/tmp/images"})
    await world.add(illumination, args_parallel={"overwrite_input": True})
    await world.add(mip)
    job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert "fractal-runner backend: slurm_sudo" in job.log
    assert await world.images() == golden_images(world.zarr_dir)
    ds = await world.client.datasets.GetDataset(
        dataset_service_pb2.GetDatasetRequest(
            project_id=world.project_id, dataset_id=world.dataset_id
        ),
        metadata=world.client.md,
    )
    assert dict(ds.dataset.filters.types) == GOLDEN_TYPE_FILTERS
    # Ran on SLURM as the cluster user, tagged with the job; calls recorded for resume.
    assert slurm_runner.slurm.records is not None
    tag = slurm_runner.slurm.records.tag_prefix(job.id)
    jobs = _sacct_comments(tag, since)
    assert jobs and all(line.endswith(f"|{CLUSTER_USER}") for line in jobs)
    local = Path(job.working_dir)
    assert (local / "1_illumination_correction" / "1_par_0000001.done.json").is_file()
    assert list((local / "2_mip_compound").glob("2_slurm_submit.sbatch"))
    assert job.working_dir_user.startswith(str(Path(world.zarr_dir).parent / "cache"))
    sbatch = slurm_runner.slurm.calls.count("sbatch", user=CLUSTER_USER) - sbatch_before
    # 1 + 2 (create: init, 2 images over target_num_jobs=2) + 2 (illumination) + 1 + 2 (MIP);
    # sacct may not list the last ones yet (accounting lags). Each one recorded, with its id.
    assert sbatch == 8
    assert len(jobs) <= sbatch
    assert await slurm_runner.slurm.records.count(job.id) == 8


async def test_task_exiting_non_zero(world: World) -> None:
    ok = await world.task(
        "mark", command_non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    bad = await world.task("fail here", command_non_parallel=mock("generic_task.py"))
    await world.add(ok)
    await world.add(bad, args_non_parallel={"raise_error": True})
    job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith("TASK ERROR: Task name: fail here, position in Workflow: 1\n")
    assert "generic_task: failing on purpose (raise_error=True)" in job.log


async def test_stop_during_a_run_scancels_its_jobs(world: World, slurm_runner: RunnerApp) -> None:
    ok = await world.task(
        "mark", command_non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    sleeper = await world.task("sleeper", command_non_parallel=mock("generic_task.py"))
    await world.add(ok)
    await world.add(sleeper, args_non_parallel={"sleep_seconds": 300})
    job = await world.submit()
    assert slurm_runner.slurm is not None and slurm_runner.slurm.records is not None
    comment = slurm_runner.slurm.records.tag_prefix(job.id)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not re.search(f"\\|{re.escape(comment)}[^|]*\\|RUNNING", _squeue()):
        assert time.monotonic() < deadline, (await world.get(job.id)).log
        await asyncio.sleep(0.3)
    await world.client.jobs.StopJob(
        job_service_pb2.StopJobRequest(project_id=world.project_id, job_id=job.id),
        metadata=world.client.md,
    )
    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_FAILED
    assert (
        ended.log == f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\nJob stopped by user request."
    )
    assert comment not in _squeue()
    # The first task's result is kept.
    assert all(
        img["types"] == {} or img["types"] == {"marked": True}
        for img in (await world.images()).values()
    )


async def test_submit_needs_slurm_user_and_cache_dir(slurm_admin: ApiClient, job_dir: Path) -> None:
    user = await slurm_admin.new_user(verified=True)
    w = await _world(user, str(job_dir / "zarr2"))
    task = await w.task("t", command_non_parallel=mock("generic_task.py"))
    await w.add(task)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.submit()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "slurm_user" in (err.value.details() or "")
    assert os.path.exists(job_dir)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "FRACTAL_SLURM_CONFIG_FILE"), ('{"default_slurm_config": {}}', "partition")],
)
async def test_a_bad_slurm_config_file_stops_the_runner_at_start(
    service_env: dict[str, str], tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "slurm.json"
    config.write_text(content)
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    settings = RunnerSettings(
        **env,
        runner_backend="slurm_sudo",
        slurm_config_file=config,
        slurm_worker_python=WORKER_PYTHON,
    )
    with pytest.raises(SettingsError, match=expected):
        RunnerApp(settings)
