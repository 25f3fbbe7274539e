"""SubmitJob racing DeleteDataset / DeleteWorkflow / DeleteProject: exactly one of the two wins,
the other gets NOT_FOUND or FAILED_PRECONDITION, never INTERNAL, and nothing is half done.

The runnerless api (no runner ends the jobs), many rounds of the two calls sent together."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest

from fractal.v2 import (
    dataset_service_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient

ROUNDS = 20


async def outcome(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() != grpc.StatusCode.INTERNAL, exc.details()
        return exc.code()
    return grpc.StatusCode.OK


async def one_round(
    user: ApiClient, task_id: int, victim: str
) -> tuple[grpc.StatusCode, grpc.StatusCode, int, int, int]:
    pid = (await user.new_project()).id
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=pid, name="d", zarr_dir=f"/zarr/{secrets.token_hex(3)}"
        ),
        metadata=user.md,
    )
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=pid, name="wf"), metadata=user.md
    )
    await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=pid, workflow_id=wf.workflow.id, task_id=task_id
        ),
        metadata=user.md,
    )
    did, wid = ds.dataset.id, wf.workflow.id
    deletes: dict[str, Callable[[], Awaitable[object]]] = {
        "dataset": lambda: user.datasets.DeleteDataset(
            dataset_service_pb2.DeleteDatasetRequest(project_id=pid, dataset_id=did),
            metadata=user.md,
        ),
        "workflow": lambda: user.workflows.DeleteWorkflow(
            workflow_service_pb2.DeleteWorkflowRequest(project_id=pid, workflow_id=wid),
            metadata=user.md,
        ),
        "project": lambda: user.projects.DeleteProject(
            project_service_pb2.DeleteProjectRequest(project_id=pid), metadata=user.md
        ),
    }
    submit = user.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=pid, workflow_id=wid, dataset_id=did),
        metadata=user.md,
    )
    submitted, deleted = await asyncio.gather(outcome(submit), outcome(deletes[victim]()))
    return submitted, deleted, pid, did, wid


@pytest.mark.parametrize("victim", ["dataset", "workflow", "project"])
async def test_submit_racing_a_delete(runnerless_admin: ApiClient, victim: str) -> None:
    user = await runnerless_admin.new_user()
    task = await user.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="t", source=f"race-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
        ),
        metadata=user.md,
    )
    seen = set()
    for _ in range(ROUNDS):
        submitted, deleted, pid, did, wid = await one_round(user, task.task.id, victim)
        seen.add((submitted, deleted))
        jobs = await user.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(project_id=0, page_size=1000), metadata=user.md
        )
        mine = [j for j in jobs.jobs if j.project_dump["id"] == pid]
        if submitted == grpc.StatusCode.OK:
            # The job exists with its links; the delete was refused because of it.
            assert deleted == grpc.StatusCode.FAILED_PRECONDITION
            (job,) = mine
            assert (job.project_id, job.workflow_id, job.dataset_id) == (pid, wid, did)
        else:
            # The delete won: no job, and the submit named what was missing.
            assert (submitted, deleted) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK)
            assert mine == []
    assert seen <= {
        (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION),
        (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK),
    }
