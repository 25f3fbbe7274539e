"""Images, tasks, workflows and job submission through the api, plus the internal RPCs the
runner uses (called here directly with a service token): the reference's image-list rules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import orjson
import pytest
from google.protobuf import struct_pb2
from pyroaring import BitMap64

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    project_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.convert import attributes_to_python
from fractal_grpc.images.bitmaps import ALL, build_members, canonical_json
from helpers import ApiClient, error_details, plain, scalar

DONE, FAILED = project_pb2.HISTORY_STATUS_DONE, project_pb2.HISTORY_STATUS_FAILED
MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"


av = scalar


def image(url: str, origin: str | None = None, **attributes: object) -> image_pb2.Image:
    msg = image_pb2.Image(zarr_url=url, attributes={k: av(v) for k, v in attributes.items()})
    if origin:
        msg.origin = origin
    return msg


async def make_dataset(client: ApiClient, zarr_dir: str = "/zarr") -> tuple[int, int]:
    project = await client.new_project()
    ds = await client.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="d", zarr_dir=zarr_dir
        ),
        metadata=client.md,
    )
    return project.id, ds.dataset.id


async def query(
    client: ApiClient, pid: int, did: int, **kw: object
) -> image_service_pb2.QueryImagesResponse:
    return await client.images.QueryImages(
        image_service_pb2.QueryImagesRequest(project_id=pid, dataset_id=did, **kw),  # type: ignore[arg-type]
        metadata=client.md,
    )


async def test_add_and_query_images_with_filters_facets_and_pages(user: ApiClient) -> None:
    pid, did = await make_dataset(user)
    batch = [
        image_pb2.Image(
            zarr_url=f"/zarr/plate.zarr/A/{i:02d}/0",
            attributes={"well": av(f"A{i:02d}"), "plate": av("plate.zarr"), "idx": av(i)},
            types={"3D": i % 2 == 0},
        )
        for i in range(25)
    ]
    added = await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
        metadata=user.md,
    )
    assert added.added_count == 25
    first = await query(user, pid, did, page_size=10)
    assert first.total_count == 25
    assert [i.zarr_url for i in first.images] == [b.zarr_url for b in batch[:10]]
    assert sorted(first.types) == ["3D"]
    assert sorted(first.attributes["plate"]) == ["plate.zarr"]
    assert len(first.attributes["well"].values) == 25
    urls = [i.zarr_url for i in first.images]
    token = first.next_page_token
    while token:
        page = await query(user, pid, did, page_size=10, page_token=token)
        assert page.total_count == 25
        urls += [i.zarr_url for i in page.images]
        token = page.next_page_token
    assert urls == [b.zarr_url for b in batch]

    filtered = await query(
        user, pid, did, filters=image_pb2.Filters(types={"3D": False}, attributes={"idx": av(3)})
    )
    assert [i.zarr_url for i in filtered.images] == ["/zarr/plate.zarr/A/03/0"]
    assert filtered.total_count == 1
    # Pages of a filtered query: every match once, in list order, the total on each page.
    even = image_pb2.Filters(types={"3D": True})
    urls, token = [], ""
    while True:
        page = await query(user, pid, did, filters=even, page_size=4, page_token=token)
        assert page.total_count == 13 and len(page.images) <= 4
        urls += [i.zarr_url for i in page.images]
        token = page.next_page_token
        if not token:
            break
    assert urls == [b.zarr_url for b in batch[::2]]
    one = await query(user, pid, did, zarr_url="/zarr/plate.zarr/A/07/0")
    assert [i.attributes["idx"].number_value for i in one.images] == [7]

    # A token used with another query is refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(user, pid, did, page_size=10, page_token=first.next_page_token, zarr_url="/x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_add_images_rules_all_or_nothing(user: ApiClient) -> None:
    pid, did = await make_dataset(user)
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/a")]
        ),
        metadata=user.md,
    )
    bad_batches = [
        (
            [image("/zarr/b"), image("/elsewhere/c")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "images[1].zarr_url",
        ),
        ([image("/zarr")], grpc.StatusCode.INVALID_ARGUMENT, "images[0].zarr_url"),
        # A string prefix of zarr_dir but not under it (the reference's check accepts it).
        ([image("/zarr_sibling/c")], grpc.StatusCode.INVALID_ARGUMENT, "images[0].zarr_url"),
        ([image("relative")], grpc.StatusCode.INVALID_ARGUMENT, "images[0].zarr_url"),
        (
            [image("/zarr/b"), image("/zarr/b/")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "images[1].zarr_url",
        ),
        (
            [image("/zarr/b"), image("/zarr/a")],
            grpc.StatusCode.ALREADY_EXISTS,
            "images[1].zarr_url",
        ),
        (
            [image_pb2.Image(zarr_url="/zarr/n", attributes={"k": scalar(None)})],
            grpc.StatusCode.INVALID_ARGUMENT,
            'images[0].attributes["k"]',
        ),
        (
            [image("/zarr/ok"), image("/zarr/nan", x=float("nan"))],
            grpc.StatusCode.INVALID_ARGUMENT,
            'images[1].attributes["x"]',
        ),
    ]
    for batch, code, field in bad_batches:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.images.AddImages(
                image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
                metadata=user.md,
            )
        assert err.value.code() == code
        assert field in error_details(err.value)[1]
    page = await query(user, pid, did)
    assert [i.zarr_url for i in page.images] == ["/zarr/a"]


async def make_task(client: ApiClient, name: str, **kw: object) -> int:
    resp = await client.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(name=name, source=f"src-{name}", **kw),  # type: ignore[arg-type]
        metadata=client.md,
    )
    return resp.task.id


def struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def test_create_task_rules(user: ApiClient) -> None:
    cmd = f"{sys.executable} {MOCK / 'generic_task.py'}"
    resp = await user.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="generic", source="gen", command_non_parallel=cmd, input_types={"3D": True}
        ),
        metadata=user.md,
    )
    task = resp.task
    assert task.type == 1 and task.source.endswith(":gen") and task.owner
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(name="g2", source="gen", command_parallel=cmd),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for req, field in [
        (task_service_pb2.CreateTaskRequest(name="x", source="s1"), "command_parallel"),
        (
            task_service_pb2.CreateTaskRequest(
                name="x", source="s2", command_parallel=cmd, meta_non_parallel=struct(a=1)
            ),
            "meta_non_parallel",
        ),
        (
            task_service_pb2.CreateTaskRequest(
                name="x",
                source="s3",
                command_parallel=cmd,
                args_schema_parallel=struct(type=12),
            ),
            "args_schema_parallel",
        ),
        (
            task_service_pb2.CreateTaskRequest(
                name="x", source="s4", command_parallel="python 'unbalanced"
            ),
            "command_parallel",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.tasks.CreateTask(req, metadata=user.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_details(err.value)[1]


async def test_unverified_user_cannot_create_tasks_or_submit(admin: ApiClient) -> None:
    plain = await admin.new_user(verified=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_task(plain, "t", command_parallel="/bin/true")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_workflow_task_args_as_given_and_reserved_keys(user: ApiClient) -> None:
    schema = struct(
        type="object",
        properties={
            "a": {"type": "integer", "default": 1},
            "b": {"type": "string", "default": "x"},
        },
    )
    tid = await make_task(
        user,
        "withdefaults",
        command_parallel="/bin/true",
        args_schema_parallel=schema,
        meta_parallel=struct(cpus=1),
    )
    project = await user.new_project()
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=user.md,
    )
    wid = wf.workflow.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    created = await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id,
            workflow_id=wid,
            task_id=tid,
            args_parallel=struct(b="y", c=3),
            meta_parallel=struct(mem=10),
        ),
        metadata=user.md,
    )
    wft = created.workflow_task
    # Args are stored exactly as given: the schema's defaults are not merged (V2 tasks).
    assert dict(wft.args_parallel) == {"b": "y", "c": 3}
    assert dict(wft.meta_parallel) == {"cpus": 1, "mem": 10}
    for args, field in [
        (dict(args_parallel=struct(zarr_url="/x")), "args_parallel"),
        (dict(args_non_parallel=struct(k=1)), "args_non_parallel"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=project.id,
                    workflow_id=wid,
                    task_id=tid,
                    **args,  # type: ignore[arg-type]
                ),
                metadata=user.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_details(err.value)[1]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.workflows.CreateWorkflowTask(
            workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=project.id, workflow_id=wid, task_id=10**12
            ),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Insert at the front: orders shift.
    await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wid, task_id=tid, order=0
        ),
        metadata=user.md,
    )
    got = await user.workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(project_id=project.id, workflow_id=wid),
        metadata=user.md,
    )
    assert [t.order for t in got.workflow.task_list] == [0, 1]
    assert got.workflow.task_list[1].id == wft.id
    # As stored, too: no schema default ("a") frozen into the workflow task.
    assert dict(got.workflow.task_list[1].args_parallel) == {"b": "y", "c": 3}
    assert not got.workflow.task_list[0].HasField("args_parallel")


async def submitted_job(
    client: ApiClient, *, task_kw: dict[str, object], zarr_dir: str = "/zarr"
) -> tuple[int, int, int, int]:
    """A project with a dataset and a one-task workflow; returns (pid, did, wid, job_id)."""
    pid, did = await make_dataset(client, zarr_dir)
    tid = await make_task(client, f"t{pid}", **task_kw)
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=pid, name="wf"), metadata=client.md
    )
    await client.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=pid, workflow_id=wf.workflow.id, task_id=tid
        ),
        metadata=client.md,
    )
    job = await client.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=pid, workflow_id=wf.workflow.id, dataset_id=did
        ),
        metadata=client.md,
    )
    return pid, did, wf.workflow.id, job.job.id


async def test_submit_checks(runnerless_admin: ApiClient) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    # One submitted job per dataset.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(project_id=pid, workflow_id=wid, dataset_id=did),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"Dataset {did} is already in use" in (err.value.details() or "")
    free = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(project_id=pid, name="free", zarr_dir="/z2"),
        metadata=user.md,
    )
    for kw, field in [
        (dict(first_task_index=1), "first_task_index"),
        (dict(last_task_index=5), "last_task_index"),
        (dict(first_task_index=-1), "first_task_index"),
        (dict(worker_init="  "), "worker_init"),
        (dict(slurm_account="nope"), "slurm_account"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    project_id=pid,
                    workflow_id=wid,
                    dataset_id=free.dataset.id,
                    **kw,  # type: ignore[arg-type]
                ),
                metadata=user.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert field in error_details(err.value)[1]
    listed = await user.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=pid), metadata=user.md
    )
    assert [j.id for j in listed.jobs] == [job_id]
    job = listed.jobs[0]
    assert job.status == job_pb2.JOB_STATUS_SUBMITTED
    assert f"_job_{job_id:07d}_" in job.working_dir
    assert [t.state for t in job.task_statuses] == [job_pb2.TASK_STATE_PENDING]


def update(
    url: str, origin: str | None = None, types: dict[str, bool] | None = None, **attrs: object
) -> ipb.ImageUpdate:
    msg = ipb.ImageUpdate(zarr_url=url, types=types or {})
    for key, value in attrs.items():
        msg.attributes[key].CopyFrom(av(value))
    if origin:
        msg.origin = origin
    return msg


async def dataset_images(client: ApiClient, pid: int, did: int) -> dict[str, dict[str, object]]:
    page = await query(client, pid, did, page_size=1000)
    result = {}
    for img in page.images:
        attrs = attributes_to_python(img.attributes)
        result[img.zarr_url] = {
            "origin": img.origin if img.HasField("origin") else None,
            "attributes": attrs,
            "types": dict(img.types),
        }
    return result


async def test_internal_rpcs_refuse_user_tokens(user: ApiClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.internal.GetJobSpec(ipb.GetJobSpecRequest(job_id=1), metadata=user.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_apply_task_result_rules(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(
        user,
        task_kw={"command_non_parallel": "/bin/true", "output_types": {"processed": True}},
    )
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid,
            dataset_id=did,
            images=[
                image("/zarr/a", well="A01", plate="p"),
                image("/zarr/b", well="B01", plate="p"),
            ],
        ),
        metadata=user.md,
    )
    spec = (
        await user.internal.GetJobSpec(ipb.GetJobSpecRequest(job_id=job_id), metadata=service_md)
    ).spec
    assert [t.order for t in spec.tasks] == [0] and spec.zarr_dir == "/zarr"
    inputs = [
        img.zarr_url
        async for batch in user.internal.StreamTaskInputs(
            ipb.StreamTaskInputsRequest(job_id=job_id, task_order=0), metadata=service_md
        )
        for img in batch.images
    ]
    assert inputs == ["/zarr/a", "/zarr/b"]
    batches = [
        [img.zarr_url for img in batch.images]
        async for batch in user.internal.StreamTaskInputs(
            ipb.StreamTaskInputsRequest(job_id=job_id, task_order=0, batch_size=1),
            metadata=service_md,
        )
    ]
    assert batches == [["/zarr/a"], ["/zarr/b"]]

    # A new image outside zarr_dir is refused and changes nothing.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.internal.ApplyTaskResult(
            ipb.ApplyTaskResultRequest(
                job_id=job_id,
                task_order=0,
                output=ipb.TaskOutput(image_list_updates=[update("/outside/new")]),
            ),
            metadata=service_md,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await dataset_images(user, pid, did)) == 2

    # Insert one image (inherits from its origin), unset an attribute, remove another image.
    output = ipb.TaskOutput(
        image_list_updates=[
            update("/zarr/a_new", origin="/zarr/a", plate="p2"),
            update("/zarr/a", well=None),
        ],
        image_list_removals=["/zarr/b"],
        filters=image_pb2.Filters(attributes={"plate": av("p2")}),
    )
    req = ipb.ApplyTaskResultRequest(job_id=job_id, task_order=0, output=output)
    first = await user.internal.ApplyTaskResult(req, metadata=service_md)
    assert (first.images_updated, first.images_created, first.images_removed) == (1, 1, 1)
    again = await user.internal.ApplyTaskResult(req, metadata=service_md)
    assert again.already_applied
    assert await dataset_images(user, pid, did) == {
        "/zarr/a": {"origin": None, "attributes": {"plate": "p"}, "types": {"processed": True}},
        "/zarr/a_new": {
            "origin": "/zarr/a",
            "attributes": {"well": "A01", "plate": "p2"},
            "types": {"processed": True},
        },
    }
    ds = await user.datasets.GetDataset(
        dataset_service_pb2.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
    )
    assert ds.dataset.filters.attributes["plate"].string_value == "p2"
    assert dict(ds.dataset.filters.types) == {"processed": True}
    assert [h.status for h in ds.dataset.history] == [project_pb2.HISTORY_STATUS_DONE]
    facets = await query(user, pid, did)
    assert sorted(facets.attributes["plate"]) == ["p", "p2"]

    done = await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="all good"),
        metadata=service_md,
    )
    assert done.job.status == job_pb2.JOB_STATUS_DONE and done.job.log == "all good"
    # Finishing again returns the job unchanged; applying after the end is refused.
    again_done = await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_FAILED, log="late"),
        metadata=service_md,
    )
    assert again_done.job.status == job_pb2.JOB_STATUS_DONE


async def test_implicit_update_applies_output_types_to_filtered_inputs(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...], database_url: str
) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(
        user, task_kw={"command_non_parallel": "/bin/true", "output_types": {"done": True}}
    )
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/a"), image("/zarr/b")]
        ),
        metadata=user.md,
    )
    await user.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(job_id=job_id, task_order=0, output=ipb.TaskOutput()),
        metadata=service_md,
    )
    got = await dataset_images(user, pid, did)
    assert all(v["types"] == {"done": True} for v in got.values()) and len(got) == 2
    await assert_facets_exact(database_url, did)
    failed = await user.internal.FinishJob(
        ipb.FinishJobRequest(
            job_id=job_id, status=job_pb2.JOB_STATUS_FAILED, log="TASK ERROR", failed_task_order=0
        ),
        metadata=service_md,
    )
    assert failed.job.status == job_pb2.JOB_STATUS_FAILED
    ds = await user.datasets.GetDataset(
        dataset_service_pb2.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
    )
    assert [h.status for h in ds.dataset.history] == [DONE, FAILED]


async def test_bad_ids_and_cross_project_references(user: ApiClient, admin: ApiClient) -> None:
    pid, did = await make_dataset(user)
    other_pid, other_did = await make_dataset(user)
    cases = [
        (
            user.datasets.GetDataset(
                dataset_service_pb2.GetDatasetRequest(project_id=pid, dataset_id=10**12),
                metadata=user.md,
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            user.datasets.GetDataset(
                dataset_service_pb2.GetDatasetRequest(project_id=pid, dataset_id=other_did),
                metadata=user.md,
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            user.datasets.GetDataset(
                dataset_service_pb2.GetDatasetRequest(project_id=0, dataset_id=did),
                metadata=user.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            admin.images.QueryImages(
                image_service_pb2.QueryImagesRequest(project_id=pid, dataset_id=did),
                metadata=admin.md,
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            user.images.QueryImages(
                image_service_pb2.QueryImagesRequest(project_id=pid, dataset_id=did, page_size=-1),
                metadata=user.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            user.images.QueryImages(
                image_service_pb2.QueryImagesRequest(
                    project_id=pid, dataset_id=did, page_token="!!not-a-token!!"
                ),
                metadata=user.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            user.workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(project_id=pid, workflow_id=10**12),
                metadata=user.md,
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            user.jobs.GetJob(
                job_service_pb2.GetJobRequest(project_id=pid, job_id=10**12), metadata=user.md
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            user.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=10**12), metadata=user.md),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code, (code, err.value.details())
        info, _ = error_details(err.value)
        assert info is not None and info.reason
    del other_pid


async def test_stop_of_an_ended_job_is_refused(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    user = await runnerless_admin.new_user()
    pid, _, _, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
        metadata=service_md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.jobs.StopJob(
            job_service_pb2.StopJobRequest(project_id=pid, job_id=job_id), metadata=user.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def assert_facets_exact(database_url: str, dataset_id: int) -> None:
    """The facets maintained by writes (each member bitmap and count) equal a rebuild from the
    images themselves."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT position, attributes::text, types::text FROM api.images WHERE dataset_id = $1",
            dataset_id,
        )
        stored = await conn.fetch(
            "SELECT kind, key, value::text, count, members FROM api.image_facets"
            " WHERE dataset_id = $1",
            dataset_id,
        )
    finally:
        await conn.close()
    rebuilt = build_members((r[0], orjson.loads(r[1]), orjson.loads(r[2])) for r in rows)
    expected = {key: bitmap for key, bitmap in rebuilt.items() if bitmap}
    kept = {}
    for kind, key, value, count, members in stored:
        bitmap = BitMap64.deserialize(members)
        assert len(bitmap) == count, (kind, key, value)
        kept[(kind, key, canonical_json(orjson.loads(value)))] = bitmap
    assert kept == expected
    assert len(kept.get(ALL, BitMap64())) == len(rows)


async def test_facets_stay_exact_through_task_results(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...], database_url: str
) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(
        user, task_kw={"command_non_parallel": "/bin/true", "output_types": {"seen": True}}
    )
    flipped = image("/zarr/e", well="E01")
    flipped.types["seen"] = False
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid,
            dataset_id=did,
            images=[
                image("/zarr/a", well="A01", n=1),
                image("/zarr/b", well="B01", n=1),
                image("/zarr/c", well="C01", n=2.5),
                flipped,
            ],
        ),
        metadata=user.md,
    )
    await assert_facets_exact(database_url, did)
    output = ipb.TaskOutput(
        image_list_updates=[update("/zarr/a", well=None, n=3), update("/zarr/d", origin="/zarr/c")],
        image_list_removals=["/zarr/b"],
    )
    await user.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(job_id=job_id, task_order=0, output=output), metadata=service_md
    )
    await assert_facets_exact(database_url, did)
    page = await query(user, pid, did)
    assert sorted(page.attributes["well"]) == ["C01", "E01"]
    assert sorted(page.types) == ["seen"]
    # A second job's implicit update flips the type of an image that had it false.
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log=""),
        metadata=service_md,
    )
    # A workflow whose task takes the images where "seen" is false (overriding the dataset
    # filter): its implicit update flips them.
    wf2 = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=pid, name="wf2"), metadata=user.md
    )
    wf1 = await user.workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(project_id=pid, workflow_id=wid), metadata=user.md
    )
    await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=pid,
            workflow_id=wf2.workflow.id,
            task_id=wf1.workflow.task_list[0].task_id,
            input_filters=image_pb2.Filters(types={"seen": False}),
        ),
        metadata=user.md,
    )
    again = await user.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=pid, workflow_id=wf2.workflow.id, dataset_id=did
        ),
        metadata=user.md,
    )
    await user.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(job_id=again.job.id, task_order=0, output=ipb.TaskOutput()),
        metadata=service_md,
    )
    await assert_facets_exact(database_url, did)
    seen = await query(user, pid, did, filters=image_pb2.Filters(types={"seen": True}))
    assert seen.total_count == 4 and len(seen.images) == 4


async def test_large_batches_are_single_statements(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...], database_url: str
) -> None:
    """More urls than PostgreSQL's 32,767 bind parameters, in one AddImages and one task result."""
    user = await runnerless_admin.new_user()
    pid, did, _, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    n = 40_000
    batch = [image_pb2.Image(zarr_url=f"/zarr/p.zarr/{i}") for i in range(n)]
    added = await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
        metadata=user.md,
    )
    assert added.added_count == n
    await assert_statistics_refreshed(database_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.images.AddImages(
            image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    output = ipb.TaskOutput(image_list_removals=[f"/zarr/p.zarr/{i}" for i in range(0, n, 2)])
    result = await user.internal.ApplyTaskResult(
        ipb.ApplyTaskResultRequest(job_id=job_id, task_order=0, output=output),
        metadata=service_md,
    )
    assert result.images_removed == n // 2
    page = await query(user, pid, did, page_size=1)
    assert page.total_count == n // 2 and page.images[0].zarr_url == "/zarr/p.zarr/1"


async def test_total_count_matches_the_images_for_every_filter_shape(
    user: ApiClient, database_url: str
) -> None:
    """Counts come from the facet bitmaps (set operations); for every filter shape they equal
    the number of images the query returns."""
    pid, did = await make_dataset(user)
    batch = []
    for i in range(30):
        img = image(f"/zarr/i{i}", well=f"W{i % 3}", n=i % 2)
        if i % 3 == 0:
            img.types["3D"] = True
        elif i % 3 == 1:
            img.types["3D"] = False
        batch.append(img)
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
        metadata=user.md,
    )
    shapes = [
        image_pb2.Filters(),
        image_pb2.Filters(attributes={"well": av("W1")}),
        image_pb2.Filters(attributes={"n": av(1.0)}),
        image_pb2.Filters(attributes={"n": av(True)}),
        image_pb2.Filters(types={"3D": True}),
        image_pb2.Filters(types={"3D": False}),
        image_pb2.Filters(types={"other": False}),
        image_pb2.Filters(attributes={"well": av("W0")}, types={"3D": True}),
        image_pb2.Filters(attributes={"missing": av("x")}),
        image_pb2.Filters(attributes={"well": av("W1"), "n": av(1)}, types={"3D": False}),
        image_pb2.Filters(types={"3D": False, "other": False}),
        image_pb2.Filters(attributes={"well": av("W2")}, types={"3D": True}),
    ]
    for filters in shapes:
        page = await query(user, pid, did, filters=filters, page_size=1000)
        assert page.total_count == len(page.images), filters
    expected = [30, 10, 15, 0, 10, 20, 30, 10, 0, 5, 20, 0]
    counts = [(await query(user, pid, did, filters=f)).total_count for f in shapes]
    assert counts == expected
    one = await user.images.QueryImages(
        image_service_pb2.QueryImagesRequest(
            project_id=pid, dataset_id=did, zarr_url="/zarr/i4", filters=shapes[1]
        ),
        metadata=user.md,
    )
    assert one.total_count == 1 and [i.zarr_url for i in one.images] == ["/zarr/i4"]
    await assert_facets_exact(database_url, did)


async def assert_statistics_refreshed(database_url: str) -> None:
    """A bulk AddImages refreshes the planner statistics of the image table (ANALYZE)."""
    import asyncio

    import asyncpg

    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        for _ in range(100):
            analyzed = await conn.fetchval(
                "SELECT last_analyze FROM pg_stat_user_tables "
                "WHERE schemaname = 'api' AND relname = 'images'"
            )
            if analyzed is not None:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError("api.images was not analyzed after a bulk write")


async def test_concurrent_submissions_one_job_per_dataset(runnerless_admin: ApiClient) -> None:
    """Racing submissions on one dataset: the database's partial unique index lets one win."""
    import asyncio

    user = await runnerless_admin.new_user()
    pid, did = await make_dataset(user)
    tid = await make_task(user, f"race{pid}", command_non_parallel="/bin/true")
    workflows = []
    for i in range(6):
        wf = await user.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=pid, name=f"wf{i}"),
            metadata=user.md,
        )
        await user.workflows.CreateWorkflowTask(
            workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=pid, workflow_id=wf.workflow.id, task_id=tid
            ),
            metadata=user.md,
        )
        workflows.append(wf.workflow.id)

    async def submit(wid: int) -> grpc.StatusCode:
        try:
            await user.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(project_id=pid, workflow_id=wid, dataset_id=did),
                metadata=user.md,
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*[submit(w) for w in workflows])
    assert sorted(c.name for c in codes) == ["FAILED_PRECONDITION"] * 5 + ["OK"]
    listed = await user.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=pid), metadata=user.md
    )
    assert len(listed.jobs) == 1


async def test_use_dataset_filters_restricts_images_and_facets(
    runnerless_admin: ApiClient,
) -> None:
    user = await runnerless_admin.new_user()
    project = await user.new_project()
    ds = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id,
            name="d",
            zarr_dir="/zarr",
            filters=image_pb2.Filters(types={"3D": False}),
        ),
        metadata=user.md,
    )
    pid, did = project.id, ds.dataset.id
    flat = image("/zarr/flat", well="A01")
    cube = image("/zarr/cube", well="B01")
    cube.types["3D"] = True
    cube.attributes["z"].number_value = 3
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=[flat, cube]),
        metadata=user.md,
    )
    everything = await query(user, pid, did)
    assert everything.total_count == 2 and sorted(everything.types) == ["3D"]
    assert sorted(everything.attributes) == ["well", "z"]
    restricted = await query(user, pid, did, use_dataset_filters=True)
    assert [i.zarr_url for i in restricted.images] == ["/zarr/flat"]
    assert restricted.total_count == 1
    assert list(restricted.attributes["well"]) == ["A01"]
    assert "z" not in restricted.attributes
    assert list(restricted.types) == []
    # An image with the type set to false counts the type key in.
    flat2 = image("/zarr/flat2", well="A02")
    flat2.types["3D"] = False
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=[flat2]),
        metadata=user.md,
    )
    restricted = await query(user, pid, did, use_dataset_filters=True)
    assert restricted.total_count == 2 and list(restricted.types) == ["3D"]
    wells = sorted(restricted.attributes["well"])
    assert wells == ["A01", "A02"]


async def test_list_tasks_and_workflows_paginate(user: ApiClient) -> None:
    for i in range(3):
        await make_task(user, f"listed{i}-{user.email}", command_parallel="/bin/true")
    seen: list[int] = []
    token = ""
    while True:
        page = await user.tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                page_size=2,
                page_token=token,
            ),
            metadata=user.md,
        )
        assert len(page.tasks) <= 2
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and len(seen) >= 3
    project = await user.new_project()
    for i in range(3):
        await user.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name=f"w{i}"),
            metadata=user.md,
        )
    first = await user.workflows.ListWorkflows(
        workflow_service_pb2.ListWorkflowsRequest(project_id=project.id, page_size=2),
        metadata=user.md,
    )
    rest = await user.workflows.ListWorkflows(
        workflow_service_pb2.ListWorkflowsRequest(
            project_id=project.id, page_size=2, page_token=first.next_page_token
        ),
        metadata=user.md,
    )
    assert [w.name for w in first.workflows] + [w.name for w in rest.workflows] == [
        "w0",
        "w1",
        "w2",
    ]
    assert rest.next_page_token == ""


@pytest.fixture(scope="module")
async def rate_limited_admin(service_env: dict[str, str], nats_prefix: str) -> Any:
    """An api with the reference's submission rate limit (60 s here), no runner behind it."""
    from helpers import admin_of
    from world import delete_streams_async, running_api

    prefix = f"{nats_prefix}r"
    try:
        async with (
            running_api(service_env, nats_prefix=prefix, api_submit_rate_limit=60) as running,
            admin_of(running) as admin,
        ):
            yield admin
    finally:
        await delete_streams_async(prefix)


async def test_submission_rate_limit(
    rate_limited_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    user = await rate_limited_admin.new_user()
    pid, did, wid, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    await user.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log=""),
        metadata=service_md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(project_id=pid, workflow_id=wid, dataset_id=did),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "SUBMIT_RATE_LIMITED"


async def test_create_workflow_task_is_idempotent_with_request_id(user: ApiClient) -> None:
    tid = await make_task(user, f"idem-{user.email}", command_parallel="/bin/true")
    project = await user.new_project()
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=user.md,
    )
    req = workflow_service_pb2.CreateWorkflowTaskRequest(
        project_id=project.id, workflow_id=wf.workflow.id, task_id=tid, request_id="once"
    )
    first = await user.workflows.CreateWorkflowTask(req, metadata=user.md)
    again = await user.workflows.CreateWorkflowTask(req, metadata=user.md)
    assert again.workflow_task.id == first.workflow_task.id
    got = await user.workflows.GetWorkflow(
        workflow_service_pb2.GetWorkflowRequest(project_id=project.id, workflow_id=wf.workflow.id),
        metadata=user.md,
    )
    assert [t.id for t in got.workflow.task_list] == [first.workflow_task.id]


async def test_concurrent_adds_to_one_dataset_keep_positions_and_facets_exact(
    user: ApiClient, database_url: str
) -> None:
    """Writers of one image list take turns (the dataset row lock): racing AddImages calls
    leave every image once, in distinct positions, and facet bitmaps equal to a rebuild."""
    import asyncio

    pid, did = await make_dataset(user)

    async def add(worker: int) -> None:
        batch = [image(f"/zarr/w{worker}/{i}", well=f"W{i % 5}", worker=worker) for i in range(40)]
        for j, img in enumerate(batch):
            img.types["odd"] = j % 2 == 1
        for start in range(0, 40, 10):
            await user.images.AddImages(
                image_service_pb2.AddImagesRequest(
                    project_id=pid, dataset_id=did, images=batch[start : start + 10]
                ),
                metadata=user.md,
            )

    await asyncio.gather(*(add(w) for w in range(6)))
    everything = await query(user, pid, did, page_size=1000)
    assert everything.total_count == 240 and len(everything.images) == 240
    assert len({i.zarr_url for i in everything.images}) == 240
    per_worker = await query(
        user, pid, did, filters=image_pb2.Filters(attributes={"worker": av(3)}, types={"odd": True})
    )
    assert per_worker.total_count == 20
    await assert_facets_exact(database_url, did)


async def test_equal_numbers_share_a_facet_shown_as_first_given(
    user: ApiClient, database_url: str
) -> None:
    """2.0 and 2 are one JSON value: one facet, an integer, matched by either."""
    pid, did = await make_dataset(user)
    for img in (image("/zarr/a", y=2.0, z=7), image("/zarr/b", y=2, z=7.0)):
        await user.images.AddImages(
            image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=[img]),
            metadata=user.md,
        )
    listed = await query(user, pid, did)
    assert [type(v) for v in plain(listed.attributes["y"])] == [int]
    assert plain(listed.attributes["y"]) == [2] and plain(listed.attributes["z"]) == [7]
    for value in (2, 2.0):
        found = await query(user, pid, did, filters=image_pb2.Filters(attributes={"y": av(value)}))
        assert found.total_count == 2 and len(found.images) == 2
    await assert_facets_exact(database_url, did)
