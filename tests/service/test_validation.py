"""Validation before any servicer runs: declared rules, JSON-safe Structs, malformed bytes,
bounded messages, and a large request that does not hold up other calls."""

from __future__ import annotations

import asyncio
import math

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_service_pb2,
    project_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.grpckit.validation import MAX_STRUCT_DEPTH
from helpers import ApiClient, error_details


def _struct(value: dict[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def _refused(call: object, field: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info, fields = error_details(err.value)
    # A long path is cut (with "…") like every echoed value.
    assert field in fields or any(f.startswith(field) for f in fields), (field, fields)
    assert info is not None and info.reason == "INVALID_ARGUMENT"
    return err.value


async def test_declared_rules_name_the_field(user: ApiClient) -> None:
    projects = user.projects
    await _refused(
        projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="a\x00b"), metadata=user.md
        ),
        "name",
    )
    err = await _refused(
        projects.CreateProject(project_service_pb2.CreateProjectRequest(name=""), metadata=user.md),
        "name",
    )
    assert "\x00" not in (err.details() or "")
    await _refused(
        projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=-1), metadata=user.md
        ),
        "page_size",
    )
    await _refused(
        projects.GetProject(project_service_pb2.GetProjectRequest(project_id=0), metadata=user.md),
        "project_id",
    )
    await _refused(
        projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="p", request_id="r" * 129),
            metadata=user.md,
        ),
        "request_id",
    )


async def test_filters_and_images_at_any_depth(user: ApiClient) -> None:
    project = await user.new_project()
    filters = image_pb2.Filters()
    filters.attributes["k\x00"].string_value = "v"
    await _refused(
        user.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project.id, name="d", zarr_dir="/z", filters=filters
            ),
            metadata=user.md,
        ),
        'filters.attributes["k\\0"]',
    )
    image = image_pb2.Image(zarr_url="/z/a")
    image.attributes["x"].string_value = "s" * 2000
    await _refused(
        user.images.AddImages(
            image_service_pb2.AddImagesRequest(project_id=project.id, dataset_id=1, images=[image]),
            metadata=user.md,
        ),
        'images[0].attributes["x"]',
    )


async def test_struct_values_must_fit_json_and_postgresql(user: ApiClient) -> None:
    project = await user.new_project()
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=user.md,
    )
    cases = [
        ({"a": math.nan}, 'args_non_parallel["a"]'),
        ({"a": {"b": [1, math.inf]}}, 'args_non_parallel["a"]["b"][1]'),
        ({"k": "v\x00"}, 'args_non_parallel["k"]'),
        ({"k\x00": 1}, "args_non_parallel"),
        ({"deep": _nested(MAX_STRUCT_DEPTH + 5)}, 'args_non_parallel["deep"][0][0][0][0]'),
    ]
    for args, field in cases:
        err = await _refused(
            user.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=project.id,
                    workflow_id=wf.workflow.id,
                    task_id=1,
                    args_non_parallel=_struct(args),
                ),
                metadata=user.md,
            ),
            field,
        )
        assert len(err.details() or "") <= 500


async def test_malformed_bytes_are_invalid_argument_with_a_plain_message(
    user: ApiClient,
) -> None:
    list_projects = user.channel.unary_unary(
        "/fractal.v2.ProjectService/ListProjects", request_serializer=None
    )
    bad_utf8 = b"\x12\x03\xff\xfe\xc0"  # page_token = 3 bytes that are not UTF-8
    for raw in (b"\xff\xff\xff\xff", bad_utf8, b"\x0a\x7fab"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await list_projects(raw, metadata=user.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert "not a valid ListProjectsRequest message" in details
        assert "Error" not in details and "<class" not in details
        info, _ = error_details(err.value)
        assert info is not None and info.reason == "MALFORMED_REQUEST"


async def test_an_echoed_value_is_bounded(user: ApiClient) -> None:
    err = await _refused(
        user.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=1, workflow_id=1, dataset_id=1, slurm_account="a" * 20_000
            ),
            metadata=user.md,
        ),
        "slurm_account",
    )
    assert len(err.details() or "") <= 500


async def test_a_cheap_call_is_answered_while_the_largest_request_is_handled(
    user: ApiClient,
) -> None:
    """An AddImages of 100,000 images (~10 MB) and ListProjects calls side by side: the cheap
    calls are answered while the large one is still being handled."""
    project = await user.new_project()
    dataset = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="big", zarr_dir="/big"
        ),
        metadata=user.md,
    )
    request = image_service_pb2.AddImagesRequest(
        project_id=project.id,
        dataset_id=dataset.dataset.id,
        images=[
            image_pb2.Image(zarr_url=f"/big/plate/{i}", types={"3D": True}) for i in range(100_000)
        ],
    ).SerializeToString()
    add_images = user.channel.unary_unary(
        "/fractal.v2.ImageService/AddImages",
        request_serializer=None,
        response_deserializer=image_service_pb2.AddImagesResponse.FromString,
    )
    large = asyncio.ensure_future(add_images(request, metadata=user.md, timeout=600))
    answered_meanwhile = 0
    while not large.done():
        await user.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(), metadata=user.md
        )
        if not large.done():
            answered_meanwhile += 1
    assert (await large).added_count == 100_000
    assert answered_meanwhile > 0


async def test_health_endpoints_refuse_malformed_requests_plainly() -> None:
    """The kit every service uses (the runner's listener: health and reflection only)."""
    from grpc_health.v1 import health_pb2

    from fractal_grpc.grpckit.interceptors import ErrorInterceptor
    from fractal_grpc.grpckit.server import GrpcServer
    from fractal_grpc.grpckit.validation import ValidationInterceptor

    server = GrpcServer(
        "127.0.0.1:0", [ErrorInterceptor(), ValidationInterceptor()], max_message_bytes=64 * 1024
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            list_call = channel.unary_unary(
                "/grpc.health.v1.Health/List",
                request_serializer=None,
                response_deserializer=health_pb2.HealthListResponse.FromString,
            )
            listed = await list_call(b"")
            assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
            for path, kind in (("Check", "unary"), ("Watch", "stream")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    if kind == "unary":
                        await channel.unary_unary(
                            f"/grpc.health.v1.Health/{path}", request_serializer=None
                        )(b"\x0a\x02\xff\xfe")
                    else:
                        stream = channel.unary_stream(
                            f"/grpc.health.v1.Health/{path}", request_serializer=None
                        )(b"\x0a\x02\xff\xfe")
                        async for _ in stream:
                            pass
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
                assert "not a valid HealthCheckRequest message" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None)(
                    b"\x0a\x80\x80\x08" + b"x" * (128 * 1024)
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(0)


async def test_closed_lists_of_values(admin: ApiClient, service_md: tuple) -> None:
    from google.protobuf import field_mask_pb2

    from fractal.internal.v1 import job_execution_service_pb2
    from fractal.v2 import user_service_pb2

    await _refused(
        admin.users.UpdateUser(
            user_service_pb2.UpdateUserRequest(
                user_id=1, update_mask=field_mask_pb2.FieldMask(paths=["id"])
            ),
            metadata=admin.md,
        ),
        "update_mask",
    )
    await _refused(
        admin.internal.FinishJob(
            job_execution_service_pb2.FinishJobRequest(job_id=1, status=0), metadata=service_md
        ),
        "status",
    )
