"""Pagination under churn: ListJobs, ListWorkflows and ListDatasets read page by page while
items are added and deleted between the pages return every item that exists throughout exactly
once, in a stable order (keyset tokens), and never an item twice.

The runnerless api: jobs stay as the test leaves them."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient

PAGE = 4
STABLE = 14

Md = tuple[tuple[str, str], ...]
Page = Callable[[str], Awaitable[tuple[list[int], str]]]


async def read_with_churn(
    page: Page, churn: Callable[[int, list[int]], Awaitable[None]]
) -> list[int]:
    """Every id of a page-by-page read; ``churn(n, ids read so far)`` runs before the n-th page
    after the first."""
    ids, token, n = [], "", 0
    while True:
        got, token = await page(token)
        assert len(got) <= PAGE
        ids += got
        if not token:
            return ids
        n += 1
        await churn(n, ids)


def check(ids: list[int], stable: list[int], *, descending: bool) -> None:
    assert len(ids) == len(set(ids)), f"an item came twice: {ids}"
    assert ids == sorted(ids, reverse=descending), f"order not stable: {ids}"
    missing = set(stable) - set(ids)
    assert not missing, f"items that existed throughout were skipped: {sorted(missing)}"


async def dataset(client: ApiClient, pid: int) -> int:
    ds = await client.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=pid, name="d", zarr_dir=f"/zarr/{secrets.token_hex(3)}"
        ),
        metadata=client.md,
    )
    return ds.dataset.id


async def workflow(client: ApiClient, pid: int, task_id: int | None = None) -> int:
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=pid, name=secrets.token_hex(4)),
        metadata=client.md,
    )
    if task_id is not None:
        await client.workflows.CreateWorkflowTask(
            workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=pid, workflow_id=wf.workflow.id, task_id=task_id
            ),
            metadata=client.md,
        )
    return wf.workflow.id


async def test_list_datasets_and_workflows_under_churn(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    p1, p2 = (await user.new_project()).id, (await user.new_project()).id
    kinds: dict[str, dict[str, Any]] = {
        "datasets": {
            "make": dataset,
            "delete": lambda pid, i: user.datasets.DeleteDataset(
                dataset_service_pb2.DeleteDatasetRequest(project_id=pid, dataset_id=i),
                metadata=user.md,
            ),
            "list": lambda pid, token: user.datasets.ListDatasets(
                dataset_service_pb2.ListDatasetsRequest(
                    project_id=pid, page_size=PAGE, page_token=token
                ),
                metadata=user.md,
            ),
            "items": lambda resp: [d.id for d in resp.datasets],
        },
        "workflows": {
            "make": workflow,
            "delete": lambda pid, i: user.workflows.DeleteWorkflow(
                workflow_service_pb2.DeleteWorkflowRequest(project_id=pid, workflow_id=i),
                metadata=user.md,
            ),
            "list": lambda pid, token: user.workflows.ListWorkflows(
                workflow_service_pb2.ListWorkflowsRequest(
                    project_id=pid, page_size=PAGE, page_token=token
                ),
                metadata=user.md,
            ),
            "items": lambda resp: [w.id for w in resp.workflows],
        },
    }
    for name, kind in kinds.items():
        for listed_project in (p1, 0):  # one project; every project of the caller
            stable: list[int] = []
            doomed: list[tuple[int, int]] = []
            gone_unread: set[int] = set()
            for i in range(STABLE):
                pid = p1 if listed_project or i % 2 else p2
                stable.append(await kind["make"](user, pid))
                doomed.append((pid, await kind["make"](user, pid)))

            async def churn(
                n: int,
                read: list[int],
                kind: dict[str, Any] = kind,
                lp: int = listed_project,
                gone_unread: set[int] = gone_unread,
                doomed: list[tuple[int, int]] = doomed,
            ) -> None:
                # For a few pages: delete two items (the oldest, likely read already, and the
                # newest, not read yet) and add two (after every page token).
                if n > 4:
                    return
                for pid, item in (doomed.pop(0), doomed.pop()):
                    await kind["delete"](pid, item)
                    if item not in read:
                        gone_unread.add(item)
                for _ in range(2):
                    await kind["make"](user, lp or p2)

            async def page(
                token: str, kind: dict[str, Any] = kind, lp: int = listed_project
            ) -> tuple[list[int], str]:
                resp = await kind["list"](lp, token)
                return kind["items"](resp), resp.next_page_token

            ids = await read_with_churn(page, churn)
            check(ids, stable, descending=False)
            assert gone_unread, "the churn deleted nothing ahead of the read"
            assert set(ids).isdisjoint(gone_unread), name  # deleted before its page: not listed


async def test_list_jobs_under_churn(runnerless_admin: ApiClient, service_md: Md) -> None:
    user = await runnerless_admin.new_user()
    task = await user.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="t", source=f"churn-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
        ),
        metadata=user.md,
    )
    keep, churned = (await user.new_project()).id, (await user.new_project()).id
    flows = {pid: await workflow(user, pid, task.task.id) for pid in (keep, churned)}

    async def submit(pid: int, *, finish: bool) -> int:
        job = await user.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=pid, workflow_id=flows[pid], dataset_id=await dataset(user, pid)
            ),
            metadata=user.md,
        )
        if finish:
            await user.internal.FinishJob(
                ipb.FinishJobRequest(job_id=job.job.id, status=job_pb2.JOB_STATUS_DONE, log="x"),
                metadata=service_md,
            )
        return job.job.id

    stable = [await submit(keep, finish=False) for _ in range(STABLE)]
    doomed = [await submit(churned, finish=True) for _ in range(6)]

    async def churn(n: int, read: list[int]) -> None:
        if n == 1:
            # Its jobs are kept, unlinked: they leave the caller's list.
            await user.projects.DeleteProject(
                project_service_pb2.DeleteProjectRequest(project_id=churned), metadata=user.md
            )
        await submit(keep, finish=False)  # newer than every page token: not in this read

    async def page(token: str) -> tuple[list[int], str]:
        resp = await user.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(project_id=0, page_size=PAGE, page_token=token),
            metadata=user.md,
        )
        return [j.id for j in resp.jobs], resp.next_page_token

    ids = await read_with_churn(page, churn)
    check(ids, stable, descending=True)
    assert set(ids) <= set(stable) | set(doomed)
    # The first page held the newest (churned-project) jobs; the rest of them vanished with it.
    assert set(ids) & set(doomed) == set(sorted(doomed, reverse=True)[:PAGE])
