"""The world of the runner tests on the real cluster: a user running as the cluster user, a
project, a dataset and a workflow, and what SLURM says about the runner's jobs."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import field_mask_pb2
from slurm_cluster_env import CLUSTER_USER, WORKER_PYTHON

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
from golden import GOLDEN_TYPE_FILTERS, golden_images
from helpers import ApiClient, images_by_url

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


@contextmanager
def config_changed(path: Path, **defaults: Any) -> Iterator[None]:
    """The SLURM config file at ``path`` with ``defaults`` set in its default_slurm_config (the
    runner re-reads it for every task), back to ``CONFIG`` after."""
    changed = {**CONFIG, "default_slurm_config": {**CONFIG["default_slurm_config"], **defaults}}
    path.write_text(json.dumps(changed))
    try:
        yield
    finally:
        path.write_text(json.dumps(CONFIG))


def mock(script: str) -> str:
    """A mock task run by the cluster user's Python (the runner's own is not theirs to run)."""
    return f"{shlex.quote(WORKER_PYTHON)} {shlex.quote(str(MOCK / script))}"


async def set_user(admin: ApiClient, user: ApiClient, **fields: Any) -> None:
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

    async def submit(self, **fields: str) -> job_pb2.Job:
        """SubmitJob of the world's workflow on its dataset; ``fields``: slurm_account, …"""
        resp = await self.client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.project_id,
                workflow_id=self.workflow_id,
                dataset_id=self.dataset_id,
                **fields,
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
        return images_by_url(resp.images)


async def new_world(client: ApiClient, zarr_dir: str) -> World:
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


def sacct_tagged(tag_prefix: str, since: str) -> list[str]:
    """SLURM jobs whose tag starts with ``tag_prefix`` since ``since`` (job ids restart with
    each test database)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", f"--starttime={since}", "--format=JobID,Comment,User"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if f"|{tag_prefix}" in line]


def squeue_tags(user: str = CLUSTER_USER) -> str:
    """``id|comment|state`` of ``user``'s jobs in squeue, one a line."""
    return subprocess.run(
        ["squeue", "-h", "-u", user, "--format=%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def run_golden_scenario(world: World, backend_name: str) -> job_pb2.Job:
    """The walking skeleton's golden scenario (compound create, illumination correction, MIP)
    through the runner on SLURM: DONE, with the golden images and type filters."""
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
    assert f"fractal-runner backend: {backend_name}" in job.log
    assert await world.images() == golden_images(world.zarr_dir)
    ds = await world.client.datasets.GetDataset(
        dataset_service_pb2.GetDatasetRequest(
            project_id=world.project_id, dataset_id=world.dataset_id
        ),
        metadata=world.client.md,
    )
    assert dict(ds.dataset.filters.types) == GOLDEN_TYPE_FILTERS
    return job
