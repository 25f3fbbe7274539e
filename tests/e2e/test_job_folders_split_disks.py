"""Job logs and folder downloads with api and runner on different disks: the two processes run
in different working directories with a relative FRACTAL_RUNNER_WORKING_BASE_DIR, so each has
its own `jobs/` folder; the live log and the zip must come from the runner's."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from e2e_stack import Stack, stack_env, start_service, wait_serving
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient
from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database

# A task that waits (at most two minutes) until the test creates its release file.
WAITING_TASK = """\
import json, pathlib, sys, time
args = json.loads(pathlib.Path(sys.argv[sys.argv.index("--args-json") + 1]).read_text())
release = pathlib.Path(args["release"])
for _ in range(1200):
    if release.exists():
        break
    time.sleep(0.1)
print("waiting task released")
"""


@pytest.fixture(scope="module")
def split_stack(
    key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    name = f"fractal_jf_{RUN_ID}"
    prefix = f"jf{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("split")
    env = stack_env(key_env, database_url=url, nats_url=NATS_URL, nats_prefix=prefix, state=state)
    env["FRACTAL_RUNNER_WORKING_BASE_DIR"] = "jobs"  # relative: each process has its own
    logs = state / "logs"
    logs.mkdir()
    stack = Stack(env["FRACTAL_API_ADDRESS"], env, {}, logs)
    for service in ("api", "runner"):
        cwd = state / f"{service}-cwd"
        cwd.mkdir()
        stack.processes[service] = start_service(service, env, logs, cwd=cwd)
    try:
        for service, variable in (
            ("api", "FRACTAL_API_ADDRESS"),
            ("api", "FRACTAL_API_INTERNAL_ADDRESS"),
            ("runner", "FRACTAL_RUNNER_ADDRESS"),
        ):
            wait_serving(service, env[variable], stack.processes[service], logs)
        yield stack
    finally:
        for proc in stack.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in stack.processes.values():
            proc.wait(15)
        drop_database(name)
        delete_streams(prefix)


@pytest.fixture(scope="module")
async def split_admin(split_stack: Stack) -> AsyncIterator[ApiClient]:
    async with grpc.aio.insecure_channel(split_stack.api_address) as channel:
        yield await ApiClient.login(channel, "admin@fractal.xy", "1234")


async def _download(c: ApiClient, project_id: int, job_id: int) -> bytes:
    call = c.jobs.DownloadJobFolder(
        job_service_pb2.DownloadJobFolderRequest(project_id=project_id, job_id=job_id),
        metadata=c.md,
        timeout=60,
    )
    return b"".join([resp.chunk async for resp in call])


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under ``folder``, by relative path."""
    tree: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            tree[(Path(root) / d).relative_to(folder).as_posix() + "/"] = None
        for f in files:
            path = Path(root) / f
            tree[path.relative_to(folder).as_posix()] = path.read_bytes()
    return tree


def _zip_tree(data: bytes) -> dict[str, bytes | None]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename: None if info.is_dir() else archive.read(info)
            for info in archive.infolist()
        }


async def test_live_log_and_download_come_from_the_runner(
    split_stack: Stack, split_admin: ApiClient
) -> None:
    c = split_admin
    state = Path(split_stack.logs).parent
    runner_jobs, api_jobs = state / "runner-cwd" / "jobs", state / "api-cwd" / "jobs"
    script = state / "waiting_task.py"
    script.write_text(WAITING_TASK)
    release = state / "release"

    project = await c.new_project()
    ds = await c.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="ds", zarr_dir=str(state / "zarr")
        ),
        metadata=c.md,
    )
    task = await c.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="Wait For Release",
            source="jf-wait",
            command_non_parallel=f"{sys.executable} {script}",
        ),
        metadata=c.md,
    )
    wf = await c.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=c.md,
    )
    wft = workflow_service_pb2.CreateWorkflowTaskRequest(
        project_id=project.id, workflow_id=wf.workflow.id, task_id=task.task.id
    )
    wft.args_non_parallel.update({"release": str(release)})
    await c.workflows.CreateWorkflowTask(wft, metadata=c.md)
    submitted = await c.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
        ),
        metadata=c.md,
    )
    job_id = submitted.job.id

    # While the task waits: the live log, read by the runner from its own folder.
    log = ""
    for _ in range(600):
        got = await c.jobs.GetJob(
            job_service_pb2.GetJobRequest(project_id=project.id, job_id=job_id, show_tmp_logs=True),
            metadata=c.md,
        )
        log = got.job.log
        if "Start execution of workflow" in log:
            break
        await asyncio.sleep(0.1)
    assert "Start execution of workflow" in log
    assert got.job.status == job_pb2.JOB_STATUS_SUBMITTED
    (folder,) = list(runner_jobs.glob(f"proj_v2_*_job_{job_id:07d}_*"))
    assert not api_jobs.exists()  # api's disk holds no job folder

    release.touch()
    watch = c.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(project_id=project.id, job_id=job_id),
        metadata=c.md,
        timeout=120,
    )
    final = [update.job async for update in watch][-1]
    assert final.status == job_pb2.JOB_STATUS_DONE, final.log

    # Subfolders of every depth, an empty one, and a binary file are in the zip, byte for byte.
    (folder / "extra" / "deeper").mkdir(parents=True)
    (folder / "extra" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (folder / "empty").mkdir()
    archive = await _download(c, project.id, job_id)
    tree = _zip_tree(archive)
    assert tree == _tree(folder)
    assert "workflow.log" in tree and "0_wait_for_release/" in tree
    assert any(name.startswith("0_wait_for_release/0.") for name in tree)
    assert not api_jobs.exists()

    # ListJobs per workflow.
    listed = await c.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=project.id, workflow_id=wf.workflow.id),
        metadata=c.md,
    )
    assert [j.id for j in listed.jobs] == [job_id]

    # A job whose folder is gone from the runner's storage: NOT_FOUND.
    folder.rename(state / "moved-away")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _download(c, project.id, job_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    (state / "moved-away").rename(folder)

    # The runner unreachable: UNAVAILABLE with RetryInfo, never INTERNAL.
    runner = split_stack.processes["runner"]
    runner.terminate()
    runner.wait(30)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _download(c, project.id, job_id)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    assert status is not None
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
