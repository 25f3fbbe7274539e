"""The walking skeleton end to end: api and runner as processes, real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from fractal.v2 import (
    dataset_service_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.convert import attributes_to_python
from golden import GOLDEN_TYPE_FILTERS, golden_images
from helpers import ApiClient, history_status

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"
BIN = Path(sys.executable).parent


def command(script: str) -> str:
    return f"{sys.executable} {MOCK / script}"


def struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


class Scenario:
    """One user's project with a dataset, a workflow built task by task, and its jobs."""

    def __init__(self, client: ApiClient, zarr_dir: str) -> None:
        self.c = client
        self.zarr_dir = zarr_dir
        self.pid = self.did = self.wid = 0

    async def setup(self) -> Scenario:
        project = await self.c.new_project()
        self.pid = project.id
        ds = await self.c.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=self.pid, name="ds", zarr_dir=self.zarr_dir
            ),
            metadata=self.c.md,
        )
        self.did = ds.dataset.id
        wf = await self.c.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=self.pid, name="wf"),
            metadata=self.c.md,
        )
        self.wid = wf.workflow.id
        return self

    async def add_task(
        self, name: str, *, args_np: Any = None, args_p: Any = None, **kw: Any
    ) -> None:
        resp = await self.c.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(name=name, source=f"{name}-{self.pid}", **kw),
            metadata=self.c.md,
        )
        req = workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=self.pid, workflow_id=self.wid, task_id=resp.task.id
        )
        if args_np is not None:
            req.args_non_parallel.update(args_np)
        if args_p is not None:
            req.args_parallel.update(args_p)
        await self.c.workflows.CreateWorkflowTask(req, metadata=self.c.md)

    async def run(self, **kw: Any) -> job_pb2.Job:
        """Submit and watch the job to its end; returns the final state."""
        submitted = await self.c.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.pid, workflow_id=self.wid, dataset_id=self.did, **kw
            ),
            metadata=self.c.md,
        )
        return await self.watch(submitted.job.id)

    async def watch(self, job_id: int) -> job_pb2.Job:
        states = []
        call = self.c.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(project_id=self.pid, job_id=job_id),
            metadata=self.c.md,
            timeout=120,
        )
        async for update in call:
            states.append(update.job)
        versions = [s.version for s in states]
        assert versions == sorted(set(versions)), versions
        return states[-1]

    async def images(self) -> dict[str, dict[str, Any]]:
        page = await self.c.images.QueryImages(
            image_service_pb2.QueryImagesRequest(
                project_id=self.pid, dataset_id=self.did, page_size=1000
            ),
            metadata=self.c.md,
        )
        return {
            img.zarr_url: {
                "origin": img.origin if img.HasField("origin") else None,
                "attributes": attributes_to_python(img.attributes),
                "types": dict(img.types),
            }
            for img in page.images
        }

    async def dataset(self) -> Any:
        resp = await self.c.datasets.GetDataset(
            dataset_service_pb2.GetDatasetRequest(project_id=self.pid, dataset_id=self.did),
            metadata=self.c.md,
        )
        return resp.dataset


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=60
    )


def test_grpcurl_lists_services_and_logs_in(stack: Any) -> None:
    listed = grpcurl(stack.api_address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "fractal.v2.AuthService",
        "fractal.v2.JobService",
        "fractal.v2.ImageService",
        "grpc.health.v1.Health",
    } <= services
    assert not any(name.startswith("fractal.internal.") for name in services), services
    internal = grpcurl(stack.api_internal_address, "list")
    assert internal.returncode == 0, internal.stderr
    assert set(internal.stdout.split()) == {
        "fractal.internal.v1.JobExecutionService",
        "fractal.internal.v1.TaskRegistrationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    login = grpcurl(
        "-d",
        json.dumps({"email": "admin@fractal.xy", "password": "1234"}),
        stack.api_address,
        "fractal.v2.AuthService/Login",
    )
    assert login.returncode == 0, login.stderr
    body = json.loads(login.stdout)
    # grpcurl prints either the JSON names or the proto field names, depending on its version.
    assert body.get("tokenType", body.get("token_type")) == "bearer"
    assert body.get("accessToken", body.get("access_token"))
    bad = grpcurl(
        "-d",
        json.dumps({"email": "admin@fractal.xy", "password": "nope"}),
        stack.api_address,
        "fractal.v2.AuthService/Login",
    )
    assert bad.returncode != 0 and "Unauthenticated" in bad.stderr


async def test_golden_scenario(e2e_admin: ApiClient, tmp_path: Path) -> None:
    """Reference §11: create_ome_zarr_compound → illumination_correction → MIP_compound."""
    zarr_dir = str(tmp_path / "zarr")
    s = await Scenario(await e2e_admin.new_user(), zarr_dir).setup()
    await s.add_task(
        "create_ome_zarr_compound",
        command_non_parallel=command("create_ome_zarr_compound_init.py"),
        command_parallel=command("create_ome_zarr_compound_compute.py"),
        args_np={"image_dir": "/tmp/input_images"},
    )
    await s.add_task(
        "illumination_correction",
        command_parallel=command("illumination_correction.py"),
        input_types={"illumination_correction": False},
        output_types={"illumination_correction": True},
        args_p={"overwrite_input": True},
    )
    await s.add_task(
        "MIP_compound",
        command_non_parallel=command("MIP_compound_init.py"),
        command_parallel=command("MIP_compound_compute.py"),
        input_types={"3D": True},
        output_types={"3D": False},
    )
    job = await s.run()
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert [t.state for t in job.task_statuses] == [job_pb2.TASK_STATE_DONE] * 3
    assert await s.images() == golden_images(zarr_dir)
    dataset = await s.dataset()
    assert dict(dataset.filters.types) == GOLDEN_TYPE_FILTERS
    assert dict(dataset.filters.attributes) == {}
    assert [history_status(h.status) for h in dataset.history] == ["done", "done", "done"]
    assert [h.workflowtask["task"]["name"] for h in dataset.history] == [
        "create_ome_zarr_compound",
        "illumination_correction",
        "MIP_compound",
    ]
    # The job folder follows the reference's layout.
    folder = Path(job.working_dir)
    assert (folder / "workflow.log").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "0_create_ome_zarr_compound",
        "1_illumination_correction",
        "2_mip_compound",
    ]
    first = folder / "0_create_ome_zarr_compound"
    assert (first / "0.args.json").is_file()
    assert (first / "0_par_0000001.args.json").is_file()
    args = json.loads((first / "0_par_0000001.args.json").read_text())
    assert set(args) == {"zarr_url", "init_args"}
    # Done: the job's log is the content of workflow.log.
    assert "MIP_compound" in job.log and job.log in (folder / "workflow.log").read_text()


async def test_failing_task_keeps_earlier_results(e2e_admin: ApiClient, tmp_path: Path) -> None:
    zarr_dir = str(tmp_path / "zarr")
    s = await Scenario(await e2e_admin.new_user(), zarr_dir).setup()
    await s.add_task(
        "insert",
        command_non_parallel=command("dummy_insert_single_image.py"),
    )
    await s.add_task(
        "fail",
        command_non_parallel=command("generic_task.py"),
        args_np={"raise_error": True},
    )
    job = await s.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith("TASK ERROR: Task name: fail, position in Workflow: 1\nTRACEBACK:\n")
    assert [t.state for t in job.task_statuses] == [
        job_pb2.TASK_STATE_DONE,
        job_pb2.TASK_STATE_FAILED,
    ]
    assert list(await s.images()) == [f"{zarr_dir}/new_image"]
    dataset = await s.dataset()
    assert [history_status(h.status) for h in dataset.history] == ["done", "failed"]


async def test_invalid_output_is_a_job_error(e2e_admin: ApiClient, tmp_path: Path) -> None:
    s = await Scenario(await e2e_admin.new_user(), str(tmp_path / "zarr")).setup()
    await s.add_task(
        "garbage", command_non_parallel=command("generic_task.py"), args_np={"invalid_output": True}
    )
    job = await s.run()
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith(f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\n")
    assert "Validation of task output failed" in job.log


async def test_stop_running_job_kills_task_tree(e2e_admin: ApiClient, tmp_path: Path) -> None:
    import psutil

    s = await Scenario(await e2e_admin.new_user(), str(tmp_path / "zarr")).setup()
    pid_file = tmp_path / "pids.json"
    await s.add_task(
        "spawner",
        command_non_parallel=command("spawning_task.py"),
        args_np={"sleep_seconds": 300, "pid_file": str(pid_file)},
    )
    submitted = await s.c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=s.pid, workflow_id=s.wid, dataset_id=s.did),
        metadata=s.c.md,
    )
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pids = json.loads(pid_file.read_text())
    procs = [psutil.Process(p) for p in pids.values()] if isinstance(pids, dict) else []
    assert procs and all(p.is_running() for p in procs)
    # While it runs, show_tmp_logs returns the current workflow.log.
    running = await s.c.jobs.GetJob(
        job_service_pb2.GetJobRequest(
            project_id=s.pid, job_id=submitted.job.id, show_tmp_logs=True
        ),
        metadata=s.c.md,
    )
    assert running.job.status == job_pb2.JOB_STATUS_SUBMITTED
    assert "SUBMIT 0-th task (name=spawner)" in running.job.log
    await s.c.jobs.StopJob(
        job_service_pb2.StopJobRequest(project_id=s.pid, job_id=submitted.job.id),
        metadata=s.c.md,
    )
    job = await s.watch(submitted.job.id)
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert "stop" in job.log.lower()
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive
