"""Idempotency and uniqueness are decided by the database: concurrent creates with one
request_id make one object and all return it; concurrent creates of one name make one object and
ALREADY_EXISTS for the rest; a request_id reused for a different request is refused."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import field_mask_pb2

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    user_pb2,
    user_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient, error_details

RACERS = 8

Parents = dict[str, int]


async def _project(user: ApiClient) -> Parents:
    return {"project_id": (await user.new_project()).id}


async def _task(user: ApiClient, name: str) -> int:
    resp = await user.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name=name, source=f"{name}-{secrets.token_hex(3)}", command_parallel="/bin/true"
        ),
        metadata=user.md,
    )
    return resp.task.id


async def _workflow(user: ApiClient, project_id: int, name: str = "wf") -> int:
    resp = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project_id, name=name),
        metadata=user.md,
    )
    return resp.workflow.id


async def _with_workflow(user: ApiClient) -> Parents:
    parents = await _project(user)
    parents["workflow_id"] = await _workflow(user, parents["project_id"])
    parents["task_id"] = await _task(user, "wftask")
    return parents


async def _ready_to_submit(user: ApiClient) -> Parents:
    parents = await _with_workflow(user)
    await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=parents["project_id"],
            workflow_id=parents["workflow_id"],
            task_id=parents["task_id"],
        ),
        metadata=user.md,
    )
    resp = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=parents["project_id"], name="ds", zarr_dir="/zarr"
        ),
        metadata=user.md,
    )
    parents["dataset_id"] = resp.dataset.id
    return parents


async def _tasks_named(user: ApiClient, name: str) -> int:
    count, token = 0, ""
    while True:
        page = await user.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                page_size=1000,
                page_token=token,
            ),
            metadata=user.md,
        )
        count += sum(t.name == name for t in page.tasks)
        token = page.next_page_token
        if not token:
            return count


@dataclass(frozen=True)
class CreateCase:
    """One create RPC that takes a request_id: how to call it (``variant`` changes the request),
    and how many objects of its kind the parents hold."""

    method: str
    setup: Callable[[ApiClient], Awaitable[Parents]]
    call: Callable[[ApiClient, Parents, str, str], Awaitable[int]]
    count: Callable[[ApiClient, Parents], Awaitable[int]]
    superuser: bool = False
    """Called as the superuser (else as a fresh user)."""


async def _create_project(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = project_service_pb2.CreateProjectRequest(name=f"p-{variant}", request_id=rid)
    return (await u.projects.CreateProject(req, metadata=u.md)).project.id


async def _count_projects(u: ApiClient, p: Parents) -> int:
    resp = await u.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=u.md)
    return sum(pr.name.startswith("p-") for pr in resp.projects)


async def _create_dataset(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = dataset_service_pb2.CreateDatasetRequest(
        project_id=p["project_id"], name=f"d-{variant}", zarr_dir="/zarr", request_id=rid
    )
    return (await u.datasets.CreateDataset(req, metadata=u.md)).dataset.id


async def _count_datasets(u: ApiClient, p: Parents) -> int:
    req = dataset_service_pb2.ListDatasetsRequest(project_id=p["project_id"])
    return len((await u.datasets.ListDatasets(req, metadata=u.md)).datasets)


async def _import_dataset(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = dataset_service_pb2.ImportDatasetRequest(
        project_id=p["project_id"],
        name=f"d-{variant}",
        zarr_dir="/zarr",
        request_id=rid,
        images=[image_pb2.Image(zarr_url=f"/zarr/{variant}/{i}") for i in range(3)],
    )
    return (await u.datasets.ImportDataset(iter([req]), metadata=u.md)).dataset.id


async def _create_workflow(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = workflow_service_pb2.CreateWorkflowRequest(
        project_id=p["project_id"], name=f"w-{variant}", request_id=rid
    )
    return (await u.workflows.CreateWorkflow(req, metadata=u.md)).workflow.id


async def _count_workflows(u: ApiClient, p: Parents) -> int:
    req = workflow_service_pb2.ListWorkflowsRequest(project_id=p["project_id"])
    return sum(
        w.name.startswith("w-")
        for w in (await u.workflows.ListWorkflows(req, metadata=u.md)).workflows
    )


async def _create_wftask(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = workflow_service_pb2.CreateWorkflowTaskRequest(
        project_id=p["project_id"],
        workflow_id=p["workflow_id"],
        task_id=p["task_id"],
        request_id=rid,
    )
    req.args_parallel.update({"variant": variant})
    return (await u.workflows.CreateWorkflowTask(req, metadata=u.md)).workflow_task.id


async def _count_wftasks(u: ApiClient, p: Parents) -> int:
    req = workflow_service_pb2.GetWorkflowRequest(
        project_id=p["project_id"], workflow_id=p["workflow_id"]
    )
    return len((await u.workflows.GetWorkflow(req, metadata=u.md)).workflow.task_list)


async def _with_task_source(user: ApiClient) -> Parents:
    parents = await _with_workflow(user)
    task = await user.tasks.GetTask(
        task_service_pb2.GetTaskRequest(task_id=parents["task_id"]), metadata=user.md
    )
    # The source travels as text; keep it beside the ids under a key of its own.
    _SOURCES[parents["task_id"]] = task.task.source
    return parents


_SOURCES: dict[int, str] = {}


async def _import_workflow(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = workflow_service_pb2.ImportWorkflowRequest(
        project_id=p["project_id"],
        workflow=workflow_service_pb2.WorkflowExport(
            name=f"imp-{variant}",
            task_list=[workflow_service_pb2.WorkflowTaskExport(task_source=_SOURCES[p["task_id"]])],
        ),
        request_id=rid,
    )
    return (await u.workflows.ImportWorkflow(req, metadata=u.md)).workflow.id


async def _count_imports(u: ApiClient, p: Parents) -> int:
    req = workflow_service_pb2.ListWorkflowsRequest(project_id=p["project_id"])
    return sum(
        w.name.startswith("imp-")
        for w in (await u.workflows.ListWorkflows(req, metadata=u.md)).workflows
    )


async def _create_task(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = task_service_pb2.CreateTaskRequest(
        name=f"race-{p['project_id']}",
        source=f"race-{p['project_id']}-{variant}",
        command_parallel="/bin/true",
        request_id=rid,
    )
    return (await u.tasks.CreateTask(req, metadata=u.md)).task.id


async def _count_tasks(u: ApiClient, p: Parents) -> int:
    return await _tasks_named(u, f"race-{p['project_id']}")


async def _submit_job(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = job_service_pb2.SubmitJobRequest(
        project_id=p["project_id"],
        workflow_id=p["workflow_id"],
        dataset_id=p["dataset_id"],
        worker_init=f"echo {variant}",
        request_id=rid,
    )
    return (await u.jobs.SubmitJob(req, metadata=u.md)).job.id


async def _count_jobs(u: ApiClient, p: Parents) -> int:
    req = job_service_pb2.ListJobsRequest(project_id=p["project_id"])
    return len((await u.jobs.ListJobs(req, metadata=u.md)).jobs)


async def _nothing(user: ApiClient) -> Parents:
    return {"token": secrets.randbelow(10**9)}


async def _create_user(u: ApiClient, p: Parents, variant: str, rid: str) -> int:
    req = user_service_pb2.CreateUserRequest(
        email=f"race-{p['token']}@example.org",
        password="secret-pw",
        username=f"u-{variant}",
        request_id=rid,
    )
    return (await u.users.CreateUser(req, metadata=u.md)).user.id


async def _count_users(u: ApiClient, p: Parents) -> int:
    count, token = 0, ""
    while True:
        page = await u.users.ListUsers(
            user_service_pb2.ListUsersRequest(page_size=1000, page_token=token), metadata=u.md
        )
        count += sum(x.email == f"race-{p['token']}@example.org" for x in page.users)
        token = page.next_page_token
        if not token:
            return count


CASES = [
    CreateCase("CreateProject", _project, _create_project, _count_projects),
    CreateCase("CreateDataset", _project, _create_dataset, _count_datasets),
    CreateCase("ImportDataset", _project, _import_dataset, _count_datasets),
    CreateCase("CreateWorkflow", _project, _create_workflow, _count_workflows),
    CreateCase("CreateWorkflowTask", _with_workflow, _create_wftask, _count_wftasks),
    CreateCase("CreateTask", _project, _create_task, _count_tasks),
    CreateCase("ImportWorkflow", _with_task_source, _import_workflow, _count_imports),
    CreateCase("SubmitJob", _ready_to_submit, _submit_job, _count_jobs),
    CreateCase("CreateUser", _nothing, _create_user, _count_users, superuser=True),
]


def test_every_rpc_with_a_request_id_has_a_case() -> None:
    """A new create RPC with a request_id fails this test until it gets a case above."""
    modules = [
        dataset_service_pb2,
        image_service_pb2,
        job_service_pb2,
        project_service_pb2,
        task_service_pb2,
        user_service_pb2,
        workflow_service_pb2,
    ]
    with_request_id = {
        method.name
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if "request_id" in method.input_type.fields_by_name
    }
    assert with_request_id == {case.method for case in CASES}


def _code(outcome: object) -> grpc.StatusCode | None:
    if isinstance(outcome, grpc.aio.AioRpcError):
        return outcome.code()
    if isinstance(outcome, BaseException):
        raise outcome
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.method)
async def test_concurrent_creates_with_one_request_id_make_one_object(
    runnerless_admin: ApiClient, case: CreateCase
) -> None:
    user = runnerless_admin if case.superuser else await runnerless_admin.new_user()
    parents = await case.setup(user)
    before = await case.count(user, parents)
    rid = f"rid-{secrets.token_hex(8)}"
    ids = await asyncio.gather(*(case.call(user, parents, "a", rid) for _ in range(RACERS)))
    assert len(set(ids)) == 1
    assert await case.count(user, parents) == before + 1
    # A retry after the race replays too.
    assert await case.call(user, parents, "a", rid) == ids[0]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await case.call(user, parents, "b", rid)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, fields = error_details(err.value)
    assert info is not None and info.reason == "REQUEST_ID_REUSED"
    assert fields == ["request_id"]
    assert await case.count(user, parents) == before + 1


async def test_a_retry_with_another_password_replays_the_first_user(
    runnerless_admin: ApiClient,
) -> None:
    """Passwords are not part of a request's hash (a fast hash of a password is not stored)."""
    admin = runnerless_admin
    email = f"pw-{secrets.token_hex(4)}@example.org"
    created = [
        await admin.users.CreateUser(
            user_service_pb2.CreateUserRequest(email=email, password=pw, request_id=f"r-{email}"),
            metadata=admin.md,
        )
        for pw in ("first-pw", "second-pw")
    ]
    first, second = created
    assert first.user.id == second.user.id
    await ApiClient.login(admin.channel, email, "first-pw")


async def test_request_ids_are_per_user(runnerless_admin: ApiClient) -> None:
    alice, bob = await runnerless_admin.new_user(), await runnerless_admin.new_user()
    mine = await _create_project(alice, {}, "x", "shared-rid")
    theirs = await _create_project(bob, {}, "x", "shared-rid")
    assert mine != theirs


async def _race(calls: list[Awaitable[Any]]) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    errors = [o for o in outcomes if _code(o) is not None]
    return [o for o in outcomes if _code(o) is None], errors


def _assert_refused(
    errors: list[grpc.aio.AioRpcError], code: grpc.StatusCode, reason: str, field: str
) -> None:
    assert len(errors) == RACERS - 1
    for error in errors:
        assert error.code() == code
        info, fields = error_details(error)
        assert info is not None and info.reason == reason
        assert info.metadata["field"] == field
        if code == grpc.StatusCode.ALREADY_EXISTS:
            assert fields == [field]


async def test_concurrent_projects_of_one_name_make_one(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    req = project_service_pb2.CreateProjectRequest(name="same")
    created, errors = await _race(
        [user.projects.CreateProject(req, metadata=user.md) for _ in range(RACERS)]
    )
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.ALREADY_EXISTS, "PROJECT_NAME_IN_USE", "name")
    listed = await user.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=user.md
    )
    assert [p.name for p in listed.projects] == ["same"]
    # The rule is per user: another user may have a project of that name.
    other = await runnerless_admin.new_user()
    await other.projects.CreateProject(req, metadata=other.md)


async def test_concurrent_workflows_of_one_name_make_one(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    parents = await _project(user)
    created, errors = await _race(
        [_workflow(user, parents["project_id"], "same") for _ in range(RACERS)]
    )
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.ALREADY_EXISTS, "WORKFLOW_NAME_IN_USE", "name")


async def test_concurrent_tasks_of_one_source_make_one(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    source = f"same-{secrets.token_hex(4)}"
    req = task_service_pb2.CreateTaskRequest(
        name=source, source=source, command_parallel="/bin/true"
    )
    created, errors = await _race(
        [user.tasks.CreateTask(req, metadata=user.md) for _ in range(RACERS)]
    )
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.ALREADY_EXISTS, "TASK_SOURCE_IN_USE", "source")
    assert await _tasks_named(user, source) == 1


async def test_concurrent_users_of_one_email_make_one(runnerless_admin: ApiClient) -> None:
    admin = runnerless_admin
    local = f"same-{secrets.token_hex(4)}"
    # Emails are compared case-insensitively.
    requests = [
        user_service_pb2.CreateUserRequest(
            email=f"{local.upper() if i % 2 else local}@example.org", password="secret-pw"
        )
        for i in range(RACERS)
    ]
    created, errors = await _race([admin.users.CreateUser(r, metadata=admin.md) for r in requests])
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.ALREADY_EXISTS, "USER_EXISTS", "email")


async def test_concurrent_renames_to_one_email_leave_one(runnerless_admin: ApiClient) -> None:
    admin = runnerless_admin
    ids = []
    for _ in range(RACERS):
        email = f"user-{secrets.token_hex(4)}@example.org"
        ids.append((await admin.create_user(email, "secret-pw")).id)
    target = f"taken-{secrets.token_hex(4)}@example.org"
    created, errors = await _race(
        [
            admin.users.UpdateUser(
                user_service_pb2.UpdateUserRequest(
                    user_id=user_id,
                    user=user_pb2.User(email=target),
                    update_mask=field_mask_pb2.FieldMask(paths=["email"]),
                ),
                metadata=admin.md,
            )
            for user_id in ids
        ]
    )
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.ALREADY_EXISTS, "USER_EXISTS", "email")


async def test_concurrent_submissions_on_one_dataset_make_one_job(
    runnerless_admin: ApiClient,
) -> None:
    user = await runnerless_admin.new_user()
    parents = await _ready_to_submit(user)
    created, errors = await _race([_submit_job(user, parents, str(i), "") for i in range(RACERS)])
    assert len(created) == 1
    _assert_refused(errors, grpc.StatusCode.FAILED_PRECONDITION, "DATASET_IN_USE", "dataset_id")
    assert await _count_jobs(user, parents) == 1
