"""GetWorkflowStatus (reference §5.8) keyed by workflow-task id: right while a job runs, after
the workflow is reordered (the reference's #793/#1083) and after a workflow task is deleted.

The runnerless api: the test plays the runner through the internal RPCs (ReportTaskProgress,
ApplyTaskResult, FinishJob), so each state is exactly the one asserted."""

from __future__ import annotations

import secrets

import grpc
import grpc.aio
import pytest

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient

PENDING = job_pb2.TASK_STATE_PENDING
RUNNING = job_pb2.TASK_STATE_RUNNING
DONE = job_pb2.TASK_STATE_DONE
FAILED = job_pb2.TASK_STATE_FAILED

Md = tuple[tuple[str, str], ...]


class Flow:
    """A project with a dataset and a workflow of ``n`` non-parallel tasks."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.pid = self.did = self.wid = 0
        self.wftasks: list[int] = []

    async def build(self, n: int) -> Flow:
        c = self.client
        self.pid = (await c.new_project()).id
        ds = await c.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=self.pid, name="ds", zarr_dir=f"/zarr/{secrets.token_hex(3)}"
            ),
            metadata=c.md,
        )
        self.did = ds.dataset.id
        wf = await c.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=self.pid, name="wf"),
            metadata=c.md,
        )
        self.wid = wf.workflow.id
        for i in range(n):
            task = await c.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    name=f"t{i}",
                    source=f"status-{secrets.token_hex(4)}",
                    command_non_parallel="/bin/true",
                ),
                metadata=c.md,
            )
            wft = await c.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=self.pid, workflow_id=self.wid, task_id=task.task.id
                ),
                metadata=c.md,
            )
            self.wftasks.append(wft.workflow_task.id)
        return self

    async def status(self) -> tuple[list[tuple[int, int, int]], int]:
        resp = await self.client.workflows.GetWorkflowStatus(
            workflow_service_pb2.GetWorkflowStatusRequest(
                project_id=self.pid, workflow_id=self.wid, dataset_id=self.did
            ),
            metadata=self.client.md,
        )
        return (
            [(s.workflow_task_id, s.order, s.state) for s in resp.statuses],
            resp.running_job_id,
        )

    async def submit(self, first: int, last: int) -> int:
        job = await self.client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.pid,
                workflow_id=self.wid,
                dataset_id=self.did,
                first_task_index=first,
                last_task_index=last,
            ),
            metadata=self.client.md,
        )
        return job.job.id

    async def reorder(self, ids: list[int]) -> None:
        await self.client.workflows.UpdateWorkflow(
            workflow_service_pb2.UpdateWorkflowRequest(
                project_id=self.pid, workflow_id=self.wid, reordered_workflow_task_ids=ids
            ),
            metadata=self.client.md,
        )


async def run_task(client: ApiClient, md: Md, job_id: int, order: int) -> None:
    """Play the runner for one task: a progress report, then the (empty) result."""
    await client.internal.ReportTaskProgress(
        ipb.ReportTaskProgressRequest(
            job_id=job_id, task_order=order, calls=ipb.CallCounts(total=1)
        ),
        metadata=md,
    )
    await client.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(
            job_id=job_id,
            task_order=order,
            output=ipb.TaskOutput(),
            calls=ipb.CallCounts(done=1, total=1),
        ),
        metadata=md,
    )


async def test_status_follows_ids_through_a_reorder_while_a_job_runs(
    runnerless_admin: ApiClient, service_md: Md
) -> None:
    user = await runnerless_admin.new_user()
    flow = await Flow(user).build(3)
    a, b, c = flow.wftasks
    assert await flow.status() == ([], 0)

    job_id = await flow.submit(0, 1)  # the slice is a, b
    assert await flow.status() == ([(a, 0, PENDING), (b, 1, PENDING)], job_id)
    await run_task(user, service_md, job_id, 0)
    await user.internal.ReportTaskProgress(
        ipb.ReportTaskProgressRequest(job_id=job_id, task_order=1, calls=ipb.CallCounts(total=1)),
        metadata=service_md,
    )
    assert await flow.status() == ([(a, 0, DONE), (b, 1, RUNNING)], job_id)

    # Reordered while the job runs: the job's tasks keep their states at their new positions
    # (the reference would mark task_list[0:2], now c and a, as submitted).
    await flow.reorder([c, a, b])
    assert await flow.status() == ([(a, 1, DONE), (b, 2, RUNNING)], job_id)

    await user.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(job_id=job_id, task_order=1, output=ipb.TaskOutput()),
        metadata=service_md,
    )
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
        metadata=service_md,
    )
    assert await flow.status() == ([(a, 1, DONE), (b, 2, DONE)], 0)

    # Back to the first order, then a deleted workflow task: the rest is still found by id.
    await flow.reorder([a, b, c])
    assert await flow.status() == ([(a, 0, DONE), (b, 1, DONE)], 0)
    await user.workflows.DeleteWorkflowTask(
        workflow_service_pb2.DeleteWorkflowTaskRequest(
            project_id=flow.pid, workflow_id=flow.wid, workflow_task_id=a
        ),
        metadata=user.md,
    )
    assert await flow.status() == ([(b, 0, DONE)], 0)


async def test_status_stops_after_a_failure_and_after_the_latest_run(
    runnerless_admin: ApiClient, service_md: Md
) -> None:
    user = await runnerless_admin.new_user()
    flow = await Flow(user).build(3)
    a, b, c = flow.wftasks

    job_id = await flow.submit(0, 2)
    for order in range(3):
        await run_task(user, service_md, job_id, order)
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
        metadata=service_md,
    )
    assert await flow.status() == ([(a, 0, DONE), (b, 1, DONE), (c, 2, DONE)], 0)

    # Only b again, and it fails: c's older result is not shown.
    job_id = await flow.submit(1, 1)
    assert await flow.status() == ([(a, 0, DONE), (b, 1, PENDING)], job_id)
    await user.internal.FinishJob(
        ipb.FinishJobRequest(
            job_id=job_id,
            status=job_pb2.JOB_STATUS_FAILED,
            log="TASK ERROR",
            failed_task_order=1,
            failed_task_calls=ipb.CallCounts(failed=1, total=1),
        ),
        metadata=service_md,
    )
    assert await flow.status() == ([(a, 0, DONE), (b, 1, FAILED)], 0)
    job = await user.jobs.GetJob(
        job_service_pb2.GetJobRequest(project_id=flow.pid, job_id=job_id), metadata=user.md
    )
    assert [(t.state, t.calls_failed, t.calls_total) for t in job.job.task_statuses] == [
        (FAILED, 1, 1)
    ]


async def test_status_refuses_what_is_not_the_callers(
    runnerless_admin: ApiClient, service_md: Md
) -> None:
    user = await runnerless_admin.new_user()
    flow = await Flow(user).build(1)
    other = await Flow(await runnerless_admin.new_user()).build(1)
    for pid, wid, did in [
        (flow.pid, flow.wid, other.did),  # a dataset of another project
        (flow.pid, other.wid, flow.did),  # a workflow of another project
        (other.pid, other.wid, other.did),  # another user's project
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.workflows.GetWorkflowStatus(
                workflow_service_pb2.GetWorkflowStatusRequest(
                    project_id=pid, workflow_id=wid, dataset_id=did
                ),
                metadata=user.md,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
