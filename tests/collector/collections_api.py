"""Calling TaskCollectionService in the tests: collect, and follow a collection to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal.v2 import task_collection_pb2 as cpb
from fractal.v2 import task_collection_service_pb2 as pb
from helpers import ApiClient

ENDED = (cpb.COLLECTION_STATE_OK, cpb.COLLECTION_STATE_FAILED)


async def collect(user: ApiClient, package: str, **fields: Any) -> cpb.TaskCollection:
    resp = await user.collections.CollectPip(
        pb.CollectPipRequest(package=package, **fields), metadata=user.md
    )
    return resp.collection


async def watch(
    user: ApiClient, collection_id: int, timeout: float = 120.0
) -> list[pb.WatchCollectionResponse]:
    """Every message of WatchCollection, to the end of the stream."""

    async def read() -> list[pb.WatchCollectionResponse]:
        stream = user.collections.WatchCollection(
            pb.WatchCollectionRequest(collection_id=collection_id), metadata=user.md
        )
        return [message async for message in stream]

    return await asyncio.wait_for(read(), timeout)


async def collected(
    user: ApiClient, package: str, **fields: Any
) -> tuple[cpb.TaskCollection, list[pb.WatchCollectionResponse]]:
    """Collect and wait for the end: (the final record with its log, the watched messages)."""
    first = await collect(user, package, **fields)
    messages = await watch(user, first.id)
    return await with_log(user, first.id), messages


async def tasks_with_source(user: ApiClient, prefix: str) -> list[Any]:
    found = []
    token = ""
    while True:
        page = await user.tasks.ListTasks(
            # With the args schemas (ListTasks leaves them out unless asked).
            task_service_pb2.ListTasksRequest(
                page_size=1000,
                page_token=token,
                args_schema_parallel=True,
                args_schema_non_parallel=True,
            ),
            metadata=user.md,
        )
        found += [t for t in page.tasks if t.source.startswith(prefix)]
        token = page.next_page_token
        if not token:
            return found


async def activity_ends_ok(user: ApiClient, activity: cpb.TaskCollection) -> None:
    """A deactivation or reactivation, watched to its end: OK."""
    messages = await watch(user, activity.id)
    final = messages[-1].collection
    assert final.state == cpb.COLLECTION_STATE_OK, "".join(m.new_log for m in messages)


async def one_image_workflow(
    user: ApiClient, zarr_dir: str, task_ids: Sequence[int]
) -> job_service_pb2.SubmitJobRequest:
    """A new project with a dataset of one image in ``zarr_dir`` and a workflow of the tasks
    ``task_ids``; the request that submits it."""
    project = await user.new_project()
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="plate", zarr_dir=zarr_dir
        ),
        metadata=user.md,
    )
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=project.id,
            dataset_id=ds.dataset.id,
            images=[image_pb2.Image(zarr_url=f"{zarr_dir}/plate.zarr/A/01/0")],
        ),
        metadata=user.md,
    )
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="collected"),
        metadata=user.md,
    )
    for task_id in task_ids:
        await user.workflows.CreateWorkflowTask(
            workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=project.id, workflow_id=wf.workflow.id, task_id=task_id
            ),
            metadata=user.md,
        )
    return job_service_pb2.SubmitJobRequest(
        project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
    )


async def run_job(
    user: ApiClient, submit: job_service_pb2.SubmitJobRequest, timeout: float
) -> job_pb2.Job:
    """Submit, and watch the job to DONE or FAILED."""
    job = await user.jobs.SubmitJob(submit, metadata=user.md)

    async def ended() -> job_pb2.Job:
        stream = user.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(project_id=submit.project_id, job_id=job.job.id),
            metadata=user.md,
        )
        async for resp in stream:
            if resp.job.status in (job_pb2.JOB_STATUS_DONE, job_pb2.JOB_STATUS_FAILED):
                return resp.job
        raise AssertionError("the job watch ended early")

    return await asyncio.wait_for(ended(), timeout)


async def images_of(user: ApiClient, submit: job_service_pb2.SubmitJobRequest) -> list[Any]:
    """The images of the submitted dataset."""
    found = await user.images.QueryImages(
        image_service_pb2.QueryImagesRequest(
            project_id=submit.project_id, dataset_id=submit.dataset_id
        ),
        metadata=user.md,
    )
    return list(found.images)


async def with_log(user: ApiClient, collection_id: int) -> cpb.TaskCollection:
    """The collection's record now, with its log."""
    got = await user.collections.GetCollection(
        pb.GetCollectionRequest(collection_id=collection_id, with_log=True), metadata=user.md
    )
    return got.collection
