"""Light list responses: ListWorkflows across the caller's projects and without args schemas
unless asked, ListTasks' two schema flags, ListJobs without logs unless asked."""

from __future__ import annotations

import secrets

from google.protobuf import struct_pb2

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient


def schema(title: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"title": title, "type": "object", "properties": {}})
    return s


async def compound_task(client: ApiClient) -> int:
    resp = await client.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="with schemas",
            source=f"light-{secrets.token_hex(4)}",
            command_non_parallel="/bin/true",
            command_parallel="/bin/true",
            args_schema_non_parallel=schema("np"),
            args_schema_parallel=schema("p"),
        ),
        metadata=client.md,
    )
    return resp.task.id


async def workflow_with(client: ApiClient, project_id: int, task_id: int, name: str = "wf") -> int:
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project_id, name=name),
        metadata=client.md,
    )
    await client.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project_id, workflow_id=wf.workflow.id, task_id=task_id
        ),
        metadata=client.md,
    )
    return wf.workflow.id


async def all_workflows(
    client: ApiClient, page_size: int = 1, **kw: object
) -> list[workflow_service_pb2.Workflow]:
    found, token = [], ""
    while True:
        page = await client.workflows.ListWorkflows(
            workflow_service_pb2.ListWorkflowsRequest(
                page_size=page_size,
                page_token=token,
                **kw,  # type: ignore[arg-type]
            ),
            metadata=client.md,
        )
        found += list(page.workflows)
        token = page.next_page_token
        if not token:
            return found


async def test_list_workflows_across_projects_and_without_schemas(
    runnerless_admin: ApiClient,
) -> None:
    user = await runnerless_admin.new_user()
    stranger = await runnerless_admin.new_user()
    task_id = await compound_task(user)
    p1, p2 = (await user.new_project()).id, (await user.new_project()).id
    w1, w2 = await workflow_with(user, p1, task_id), await workflow_with(user, p2, task_id)
    await workflow_with(stranger, (await stranger.new_project()).id, task_id)

    mine = await all_workflows(user, project_id=0)
    assert [(w.id, w.project_id) for w in mine] == [(w1, p1), (w2, p2)]
    assert [w.id for w in await all_workflows(user, project_id=p2)] == [w2]
    for w in mine:
        (wftask,) = w.task_list
        assert wftask.task.id == task_id
        assert not wftask.task.HasField("args_schema_parallel")
        assert not wftask.task.HasField("args_schema_non_parallel")
    full = await all_workflows(user, project_id=0, include_args_schemas=True)
    for w in full:
        assert w.task_list[0].task.args_schema_parallel["title"] == "p"
        assert w.task_list[0].task.args_schema_non_parallel["title"] == "np"
    # GetWorkflow is not a list: it keeps the schemas.
    got = await user.workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(project_id=p1, workflow_id=w1), metadata=user.md
    )
    assert got.workflow.task_list[0].task.args_schema_parallel["title"] == "p"


async def test_list_tasks_schema_flags(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    task_id = await compound_task(user)

    async def listed(**kw: bool) -> task_service_pb2.Task:
        token = ""
        while True:
            page = await user.tasks.ListTasks(
                task_service_pb2.ListTasksRequest(page_size=1000, page_token=token, **kw),
                metadata=user.md,
            )
            for task in page.tasks:
                if task.id == task_id:
                    return task
            token = page.next_page_token
            assert token, "the task was not listed"

    cases = [
        ({}, (False, False)),
        ({"args_schema_parallel": True}, (True, False)),
        ({"args_schema_non_parallel": True}, (False, True)),
        ({"args_schema_parallel": True, "args_schema_non_parallel": True}, (True, True)),
    ]
    for flags, expected in cases:
        task = await listed(**flags)
        got = (task.HasField("args_schema_parallel"), task.HasField("args_schema_non_parallel"))
        assert got == expected, flags
        assert task.command_parallel == "/bin/true"  # the rest is always there


async def test_list_jobs_without_logs_unless_asked(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    user = await runnerless_admin.new_user()
    pid = (await user.new_project()).id
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(project_id=pid, name="d", zarr_dir="/zarr/l"),
        metadata=user.md,
    )
    wid = await workflow_with(user, pid, await compound_task(user))
    job = await user.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(project_id=pid, workflow_id=wid, dataset_id=ds.dataset.id),
        metadata=user.md,
    )
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job.job.id, status=job_pb2.JOB_STATUS_DONE, log="the log"),
        metadata=service_md,
    )
    light = await user.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=pid), metadata=user.md
    )
    assert [(j.id, j.log) for j in light.jobs] == [(job.job.id, "")]
    assert light.jobs[0].task_statuses[0].task_name == "with schemas"
    full = await user.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=pid, include_logs=True), metadata=user.md
    )
    assert [(j.id, j.log) for j in full.jobs] == [(job.job.id, "the log")]


async def test_lists_across_projects_merge_their_pages_in_order(
    runnerless_admin: ApiClient,
) -> None:
    """Jobs and workflows made in turns in two projects (and a stranger's, in between): read
    across the caller's projects with pages of 1, 2 and 3, each comes once, in the list's
    order (jobs newest first, workflows by id), however the pages cut the two projects."""
    user = await runnerless_admin.new_user()
    stranger = await runnerless_admin.new_user()
    task_id = await compound_task(user)
    projects = [(await user.new_project()).id for _ in range(2)]
    other = (await stranger.new_project()).id
    flows: dict[int, list[int]] = {pid: [] for pid in projects}
    jobs: dict[int, list[int]] = {pid: [] for pid in projects}
    for i in range(4):
        for pid in projects:
            wid = await workflow_with(user, pid, task_id, f"wf{i}")
            flows[pid].append(wid)
            ds = await user.datasets.CreateDataset(
                dataset_service_pb2.CreateDatasetRequest(
                    project_id=pid, name=f"d{i}", zarr_dir=f"/zarr/m{i}"
                ),
                metadata=user.md,
            )
            job = await user.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    project_id=pid, workflow_id=wid, dataset_id=ds.dataset.id
                ),
                metadata=user.md,
            )
            jobs[pid].append(job.job.id)
        await workflow_with(stranger, other, task_id, f"wf{i}")

    async def job_ids(size: int, **kw: int) -> list[int]:
        found, token = [], ""
        while True:
            page = await user.jobs.ListJobs(
                job_service_pb2.ListJobsRequest(page_size=size, page_token=token, **kw),
                metadata=user.md,
            )
            assert len(page.jobs) <= size
            found += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                return found

    every_job = sorted(jobs[projects[0]] + jobs[projects[1]], reverse=True)
    every_flow = sorted(flows[projects[0]] + flows[projects[1]])
    for size in (1, 2, 3):
        assert await job_ids(size) == every_job, size
        assert await job_ids(size, project_id=projects[1]) == jobs[projects[1]][::-1], size
        listed = await all_workflows(user, project_id=0, page_size=size)
        assert [w.id for w in listed] == every_flow, size
    one_flow = flows[projects[0]][2]
    assert await job_ids(2, project_id=projects[0], workflow_id=one_flow) == [jobs[projects[0]][2]]


async def test_a_list_item_is_what_its_get_answers(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    """The lists read records of the raw pool, the Get methods rows of the ORM; both go
    through one view per object, so an item of a list (with what the list leaves out asked
    for) is exactly what Get answers: dumps, timestamps, task statuses, optional fields."""
    user = await runnerless_admin.new_user()
    pid = (await user.new_project()).id
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(project_id=pid, name="d", zarr_dir="/zarr/g"),
        metadata=user.md,
    )
    task_id = await compound_task(user)
    wid = await workflow_with(user, pid, task_id)
    job = await user.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=pid, workflow_id=wid, dataset_id=ds.dataset.id, worker_init="export A=1"
        ),
        metadata=user.md,
    )
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job.job.id, status=job_pb2.JOB_STATUS_FAILED, log="boom"),
        metadata=service_md,
    )
    got = await user.jobs.GetJob(
        job_service_pb2.GetJobRequest(project_id=pid, job_id=job.job.id), metadata=user.md
    )
    listed = await user.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=pid, include_logs=True), metadata=user.md
    )
    assert got.job.HasField("end_time") and got.job.project_dump["id"] == pid
    assert list(listed.jobs) == [got.job]

    flow = await user.workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
    )
    flows = await user.workflows.ListWorkflows(
        workflow_service_pb2.ListWorkflowsRequest(project_id=pid, include_args_schemas=True),
        metadata=user.md,
    )
    assert list(flows.workflows) == [flow.workflow]

    task = await user.tasks.GetTask(
        task_service_pb2.GetTaskRequest(task_id=task_id), metadata=user.md
    )
    listed_tasks, token = [], ""
    while True:  # the catalogue is everybody's: read it to the end
        page = await user.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                page_token=token, args_schema_parallel=True, args_schema_non_parallel=True
            ),
            metadata=user.md,
        )
        listed_tasks += [t for t in page.tasks if t.id == task_id]
        token = page.next_page_token
        if not token:
            break
    assert listed_tasks == [task.task]
