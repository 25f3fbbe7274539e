"""Workflows and tasks: updates and deletes (reference §2.4, §3.2), against the real api."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from test_images_jobs_api import make_task, struct, submitted_job

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    image_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
)
from fractal.v2 import (
    workflow_service_pb2 as wpb,
)
from helpers import ApiClient, error_details

Code = grpc.StatusCode


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def workflow_with_tasks(
    user: ApiClient, count: int, **task_kw: object
) -> tuple[int, int, int, list[int]]:
    """A project with a workflow of ``count`` workflow tasks: (pid, wid, task id, wftask ids)."""
    project = await user.new_project()
    kw = task_kw or {"command_non_parallel": "/bin/true"}
    tid = await make_task(user, f"t{project.id}", **kw)
    wf = await user.workflows.CreateWorkflow(
        wpb.CreateWorkflowRequest(project_id=project.id, name="wf"), metadata=user.md
    )
    ids = []
    for _ in range(count):
        created = await user.workflows.CreateWorkflowTask(
            wpb.CreateWorkflowTaskRequest(
                project_id=project.id, workflow_id=wf.workflow.id, task_id=tid
            ),
            metadata=user.md,
        )
        ids.append(created.workflow_task.id)
    return project.id, wf.workflow.id, tid, ids


async def order_of(user: ApiClient, pid: int, wid: int) -> list[int]:
    got = await user.workflows.GetWorkflow(
        wpb.GetWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
    )
    assert [t.order for t in got.workflow.task_list] == list(range(len(got.workflow.task_list)))
    return [t.id for t in got.workflow.task_list]


async def test_reorder_takes_a_permutation_of_the_workflow_task_ids(user: ApiClient) -> None:
    pid, wid, _, (a, b, c) = await workflow_with_tasks(user, 3)
    _, _, _, (foreign,) = await workflow_with_tasks(user, 1)
    done = await user.workflows.UpdateWorkflow(
        wpb.UpdateWorkflowRequest(
            project_id=pid, workflow_id=wid, reordered_workflow_task_ids=[c, a, b]
        ),
        metadata=user.md,
    )
    assert [t.id for t in done.workflow.task_list] == [c, a, b]
    assert await order_of(user, pid, wid) == [c, a, b]
    for ids, words in [
        ([c, c, a, b], f"repeated ids: {c}"),
        ([c, a], f"missing ids: {b}"),
        ([c, a, b, foreign], f"not workflow tasks of this workflow: {foreign}"),
    ]:
        err = await refused(
            user.workflows.UpdateWorkflow(
                wpb.UpdateWorkflowRequest(
                    project_id=pid, workflow_id=wid, reordered_workflow_task_ids=ids
                ),
                metadata=user.md,
            )
        )
        assert err.code() == Code.INVALID_ARGUMENT
        fields = error_details(err)[1]
        assert "reordered_workflow_task_ids" in fields
        assert words in (err.details() or "") or any(words in str(v) for v in fields.values())
        assert await order_of(user, pid, wid) == [c, a, b]  # unchanged


async def test_rename_is_unique_per_project(user: ApiClient) -> None:
    pid, wid, _, _ = await workflow_with_tasks(user, 0)
    other = await user.workflows.CreateWorkflow(
        wpb.CreateWorkflowRequest(project_id=pid, name="other"), metadata=user.md
    )
    err = await refused(
        user.workflows.UpdateWorkflow(
            wpb.UpdateWorkflowRequest(project_id=pid, workflow_id=other.workflow.id, name="wf"),
            metadata=user.md,
        )
    )
    assert err.code() == Code.ALREADY_EXISTS
    assert "name" in error_details(err)[1]
    # Its own name again is no change; a new name is taken.
    same = await user.workflows.UpdateWorkflow(
        wpb.UpdateWorkflowRequest(project_id=pid, workflow_id=wid, name="wf"), metadata=user.md
    )
    assert same.workflow.name == "wf"
    renamed = await user.workflows.UpdateWorkflow(
        wpb.UpdateWorkflowRequest(project_id=pid, workflow_id=wid, name="new"), metadata=user.md
    )
    assert renamed.workflow.name == "new"
    # Another project may use the same name.
    pid2, wid2, _, _ = await workflow_with_tasks(user, 0)
    moved = await user.workflows.UpdateWorkflow(
        wpb.UpdateWorkflowRequest(project_id=pid2, workflow_id=wid2, name="new"),
        metadata=user.md,
    )
    assert moved.workflow.name == "new"


async def test_concurrent_renames_to_one_name_leave_one_winner(user: ApiClient) -> None:
    pid, _, _, _ = await workflow_with_tasks(user, 0)
    ids = []
    for i in range(4):
        wf = await user.workflows.CreateWorkflow(
            wpb.CreateWorkflowRequest(project_id=pid, name=f"w{i}"), metadata=user.md
        )
        ids.append(wf.workflow.id)
    results = await asyncio.gather(
        *(
            user.workflows.UpdateWorkflow(
                wpb.UpdateWorkflowRequest(project_id=pid, workflow_id=i, name="same"),
                metadata=user.md,
            )
            for i in ids
        ),
        return_exceptions=True,
    )
    codes = sorted(r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results)
    assert codes == ["ALREADY_EXISTS"] * 3 + ["OK"]


async def test_delete_workflow_refused_while_submitted_then_jobs_keep_their_snapshot(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    user = await runnerless_admin.new_user()
    pid, _, wid, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    err = await refused(
        user.workflows.DeleteWorkflow(
            wpb.DeleteWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
        )
    )
    assert err.code() == Code.FAILED_PRECONDITION
    assert str(job_id) in (err.details() or "")
    await user.workflows.GetWorkflow(
        wpb.GetWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
    )
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
        metadata=service_md,
    )
    await user.workflows.DeleteWorkflow(
        wpb.DeleteWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
    )
    err = await refused(
        user.workflows.GetWorkflow(
            wpb.GetWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
        )
    )
    assert err.code() == Code.NOT_FOUND
    job = (
        await user.jobs.GetJob(
            job_service_pb2.GetJobRequest(project_id=pid, job_id=job_id), metadata=user.md
        )
    ).job
    assert not job.HasField("workflow_id")
    assert job.workflow_dump["id"] == wid


async def test_workflow_task_get_update_delete(user: ApiClient) -> None:
    schema = struct(
        type="object", properties={"a": {"type": "integer", "default": 1}, "b": {"type": "string"}}
    )
    pid, wid, _, (first, second, third) = await workflow_with_tasks(
        user, 3, command_parallel="/bin/true", args_schema_parallel=schema
    )
    await user.workflows.UpdateWorkflowTask(
        wpb.UpdateWorkflowTaskRequest(
            project_id=pid, workflow_id=wid, workflow_task_id=second, args_parallel=struct(b="x")
        ),
        metadata=user.md,
    )
    # Replaced, not merged with the previous args, and no schema default added.
    changed = await user.workflows.UpdateWorkflowTask(
        wpb.UpdateWorkflowTaskRequest(
            project_id=pid,
            workflow_id=wid,
            workflow_task_id=second,
            args_parallel=struct(c=2),
            meta_parallel=struct(mem=5),
            input_filters=image_pb2.Filters(types={"3D": False}),
        ),
        metadata=user.md,
    )
    assert dict(changed.workflow_task.args_parallel) == {"c": 2}
    got = await user.workflows.GetWorkflowTask(
        wpb.GetWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=second),
        metadata=user.md,
    )
    assert dict(got.workflow_task.args_parallel) == {"c": 2}
    assert dict(got.workflow_task.meta_parallel) == {"mem": 5}
    assert dict(got.workflow_task.input_filters.types) == {"3D": False}
    for field, value in [
        ("args_non_parallel", struct(k=1)),
        ("meta_non_parallel", struct(k=1)),
        ("args_parallel", struct(zarr_url="/x")),
    ]:
        err = await refused(
            user.workflows.UpdateWorkflowTask(
                wpb.UpdateWorkflowTaskRequest(
                    project_id=pid,
                    workflow_id=wid,
                    workflow_task_id=second,
                    **{field: value},  # type: ignore[arg-type]
                ),
                metadata=user.md,
            )
        )
        assert err.code() == Code.INVALID_ARGUMENT
        assert field in error_details(err)[1]
    again = await user.workflows.GetWorkflowTask(
        wpb.GetWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=second),
        metadata=user.md,
    )
    assert dict(again.workflow_task.args_parallel) == {"c": 2}  # refusals changed nothing
    # Delete the first: the rest move up.
    await user.workflows.DeleteWorkflowTask(
        wpb.DeleteWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=first),
        metadata=user.md,
    )
    assert await order_of(user, pid, wid) == [second, third]
    err = await refused(
        user.workflows.GetWorkflowTask(
            wpb.GetWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=first),
            metadata=user.md,
        )
    )
    assert err.code() == Code.NOT_FOUND


async def test_workflow_edits_of_others_answer_not_found(user: ApiClient, admin: ApiClient) -> None:
    pid, wid, _, (wft,) = await workflow_with_tasks(user, 1)
    pid2, wid2, _, _ = await workflow_with_tasks(user, 0)
    stranger = await admin.new_user()
    calls = [
        lambda c: c.workflows.UpdateWorkflow(
            wpb.UpdateWorkflowRequest(project_id=pid, workflow_id=wid, name="x"), metadata=c.md
        ),
        lambda c: c.workflows.DeleteWorkflow(
            wpb.DeleteWorkflowRequest(project_id=pid, workflow_id=wid), metadata=c.md
        ),
        lambda c: c.workflows.GetWorkflowTask(
            wpb.GetWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=wft),
            metadata=c.md,
        ),
        lambda c: c.workflows.DeleteWorkflowTask(
            wpb.DeleteWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=wft),
            metadata=c.md,
        ),
    ]
    for make in calls:
        assert (await refused(make(stranger))).code() == Code.NOT_FOUND
        assert (await refused(make(admin))).code() == Code.NOT_FOUND
    # A workflow task named through another workflow of the user: NOT_FOUND too.
    err = await refused(
        user.workflows.DeleteWorkflowTask(
            wpb.DeleteWorkflowTaskRequest(project_id=pid2, workflow_id=wid2, workflow_task_id=wft),
            metadata=user.md,
        )
    )
    assert err.code() == Code.NOT_FOUND
    assert await order_of(user, pid, wid) == [wft]


async def test_task_update_and_delete_by_owner_or_superuser(
    user: ApiClient, admin: ApiClient
) -> None:
    pid, wid, tid, (wft,) = await workflow_with_tasks(user, 1)
    updated = await user.tasks.UpdateTask(
        task_service_pb2.UpdateTaskRequest(
            task_id=tid,
            name="renamed",
            version="2.0",
            command_non_parallel="/bin/false",
            input_types=task_service_pb2.TypeSet(types={"3D": True}),
        ),
        metadata=user.md,
    )
    assert (updated.task.name, updated.task.version) == ("renamed", "2.0")
    assert updated.task.command_non_parallel == "/bin/false"
    assert dict(updated.task.input_types) == {"3D": True}
    # Per-type check: no parallel command for a non-parallel task; the type is not recomputed.
    err = await refused(
        user.tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(task_id=tid, command_parallel="/bin/true"),
            metadata=user.md,
        )
    )
    assert err.code() == Code.INVALID_ARGUMENT
    assert "command_parallel" in error_details(err)[1]
    err = await refused(
        user.tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(task_id=tid, command_non_parallel="  "),
            metadata=user.md,
        )
    )
    assert err.code() == Code.INVALID_ARGUMENT
    # Someone else: refused; a superuser: allowed.
    stranger = await admin.new_user()
    for call in (
        stranger.tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(task_id=tid, name="theirs"), metadata=stranger.md
        ),
        stranger.tasks.DeleteTask(
            task_service_pb2.DeleteTaskRequest(task_id=tid), metadata=stranger.md
        ),
    ):
        assert (await refused(call)).code() == Code.PERMISSION_DENIED
    await admin.tasks.UpdateTask(
        task_service_pb2.UpdateTaskRequest(task_id=tid, version="3"), metadata=admin.md
    )
    # In use by a workflow: refused, naming it; the superuser is told of another user's workflow.
    err = await refused(
        user.tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(task_id=tid), metadata=user.md)
    )
    assert err.code() == Code.FAILED_PRECONDITION
    assert f"workflow {wid}" in (err.details() or "")
    err = await refused(
        admin.tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(task_id=tid), metadata=admin.md)
    )
    assert err.code() == Code.FAILED_PRECONDITION
    assert "1 workflow(s) of other users" in (err.details() or "")
    await user.workflows.DeleteWorkflowTask(
        wpb.DeleteWorkflowTaskRequest(project_id=pid, workflow_id=wid, workflow_task_id=wft),
        metadata=user.md,
    )
    await user.tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(task_id=tid), metadata=user.md)
    err = await refused(
        user.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=tid), metadata=user.md)
    )
    assert err.code() == Code.NOT_FOUND


async def test_export_then_import_round_trips_and_resolves_by_source(user: ApiClient) -> None:
    pid, wid, tid, ids = await workflow_with_tasks(user, 2)
    await user.workflows.UpdateWorkflowTask(
        wpb.UpdateWorkflowTaskRequest(
            project_id=pid,
            workflow_id=wid,
            workflow_task_id=ids[1],
            args_non_parallel=struct(x=1, nested={"y": [1, 2]}),
            input_filters=image_pb2.Filters(types={"3D": True}),
        ),
        metadata=user.md,
    )
    exported = (
        await user.workflows.ExportWorkflow(
            wpb.ExportWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
        )
    ).workflow
    task = (
        await user.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=tid), metadata=user.md)
    ).task
    assert [t.task_source for t in exported.task_list] == [task.source] * 2
    # A name already in the project: refused; a new one: created, equal to the original.
    err = await refused(
        user.workflows.ImportWorkflow(
            wpb.ImportWorkflowRequest(project_id=pid, workflow=exported), metadata=user.md
        )
    )
    assert err.code() == Code.ALREADY_EXISTS
    exported.name = "copy"
    imported = (
        await user.workflows.ImportWorkflow(
            wpb.ImportWorkflowRequest(project_id=pid, workflow=exported, request_id="imp-1"),
            metadata=user.md,
        )
    ).workflow
    again = (
        await user.workflows.ExportWorkflow(
            wpb.ExportWorkflowRequest(project_id=pid, workflow_id=imported.id), metadata=user.md
        )
    ).workflow
    assert again == exported
    replayed = await user.workflows.ImportWorkflow(
        wpb.ImportWorkflowRequest(project_id=pid, workflow=exported, request_id="imp-1"),
        metadata=user.md,
    )
    assert replayed.workflow.id == imported.id
    # An unknown source or a reserved key: refused, naming the item, and nothing is created.
    exported.name = "broken"
    exported.task_list[1].task_source = "nobody:nothing"
    exported.task_list[0].args_non_parallel.update({"zarr_url": "/x"})
    for field in ("workflow.task_list[0].args_non_parallel", "workflow.task_list[1].task_source"):
        err = await refused(
            user.workflows.ImportWorkflow(
                wpb.ImportWorkflowRequest(project_id=pid, workflow=exported), metadata=user.md
            )
        )
        assert err.code() == Code.INVALID_ARGUMENT
        assert field in error_details(err)[1]
        exported.task_list[0].args_non_parallel.Clear()
    # Parallel args for a non-parallel task: refused too (the reference's import skips the
    # POST-wftask type checks and stores them: a departure).
    exported.task_list[1].task_source = task.source
    exported.task_list[0].args_parallel.update({"a": 1})
    err = await refused(
        user.workflows.ImportWorkflow(
            wpb.ImportWorkflowRequest(project_id=pid, workflow=exported), metadata=user.md
        )
    )
    assert err.code() == Code.INVALID_ARGUMENT
    assert error_details(err)[1] == ["workflow.task_list[0].args_parallel"]
    listed = await user.workflows.ListWorkflows(
        wpb.ListWorkflowsRequest(project_id=pid), metadata=user.md
    )
    assert sorted(w.name for w in listed.workflows) == ["copy", "wf"]
