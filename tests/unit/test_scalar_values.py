"""The request validator's rule for attribute values (maps marked ``scalar_values``): what the
reference accepts in image attributes, attribute filters and task outputs, and nothing else.

Run on the validator itself (no server): the same object the ValidationInterceptor calls."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    project_pb2,
    workflow_service_pb2,
)
from fractal_grpc.grpckit.errors import InvalidArgument
from fractal_grpc.grpckit.validation import MAX_SCALAR_BYTES, Validator

VALIDATOR = Validator()

STRING = struct_pb2.Value(string_value="A01")
NUMBER = struct_pb2.Value(number_value=3)
BOOL = struct_pb2.Value(bool_value=False)
NULL = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
UNSET = struct_pb2.Value()
LIST = json_format.ParseDict([1, 2], struct_pb2.Value())
OBJECT = json_format.ParseDict({"a": 1}, struct_pb2.Value())
NAN = struct_pb2.Value(number_value=float("nan"))
INF = struct_pb2.Value(number_value=float("-inf"))
NUL = struct_pb2.Value(string_value="a\x00b")
LONG = struct_pb2.Value(string_value="é" * (MAX_SCALAR_BYTES // 2 + 1))  # 2 bytes each
LONGEST = struct_pb2.Value(string_value="x" * MAX_SCALAR_BYTES)


def violations(request: Message) -> list[tuple[str, str]]:
    try:
        VALIDATOR.check(request)
    except InvalidArgument as exc:
        return exc.violations
    return []


def add_images(value: struct_pb2.Value) -> Message:
    image = image_pb2.Image(zarr_url="/z/a", attributes={"k": value})
    return image_service_pb2.AddImagesRequest(
        project_id=1, dataset_id=1, images=[image_pb2.Image(zarr_url="/z/0"), image]
    )


def query(value: struct_pb2.Value) -> Message:
    return image_service_pb2.QueryImagesRequest(
        project_id=1, dataset_id=1, filters=image_pb2.Filters(attributes={"k": value})
    )


def task_output(value: struct_pb2.Value) -> Message:
    output = ipb.TaskOutput(image_list_updates=[ipb.ImageUpdate(zarr_url="/z/a")])
    output.image_list_updates[0].attributes["k"].CopyFrom(value)
    return ipb.ApplyTaskResultRequest(job_id=1, task_order=0, output=output)


def dataset_filters(value: struct_pb2.Value) -> Message:
    filters = image_pb2.Filters(attributes={"k": value})
    return dataset_service_pb2.UpdateDatasetRequest(
        project_id=1,
        dataset_id=1,
        dataset=project_pb2.Dataset(filters=filters),
        update_mask={"paths": ["filters"]},
    )


def wftask_filters(value: struct_pb2.Value) -> Message:
    return workflow_service_pb2.CreateWorkflowTaskRequest(
        project_id=1,
        workflow_id=1,
        task_id=1,
        input_filters=image_pb2.Filters(attributes={"k": value}),
    )


BUILDERS = {
    "image": (add_images, 'images[1].attributes["k"]', False),
    "image query filter": (query, 'filters.attributes["k"]', True),
    "task output": (task_output, 'output.image_list_updates[0].attributes["k"]', True),
    "dataset filter": (dataset_filters, 'dataset.filters.attributes["k"]', True),
    "workflow-task filter": (wftask_filters, 'input_filters.attributes["k"]', True),
}

ALWAYS_OK = [STRING, NUMBER, BOOL, LONGEST]
NEVER_OK = [
    (LIST, "not a list or an object"),
    (OBJECT, "not a list or an object"),
    (NAN, "finite"),
    (INF, "finite"),
    (NUL, "NUL"),
    (LONG, f"at most {MAX_SCALAR_BYTES} bytes"),
]


@pytest.mark.parametrize("where", BUILDERS)
@pytest.mark.parametrize("value", ALWAYS_OK, ids=["string", "number", "bool", "longest"])
def test_json_scalars_are_accepted(where: str, value: struct_pb2.Value) -> None:
    build, _, _ = BUILDERS[where]
    assert violations(build(value)) == []


@pytest.mark.parametrize("where", BUILDERS)
@pytest.mark.parametrize(
    ("value", "why"), NEVER_OK, ids=["list", "object", "nan", "inf", "nul", "long"]
)
def test_what_is_not_a_scalar_is_refused_naming_the_key(
    where: str, value: struct_pb2.Value, why: str
) -> None:
    build, path, _ = BUILDERS[where]
    found = violations(build(value))
    assert len(found) == 1
    assert found[0][0] == path and why in found[0][1]


@pytest.mark.parametrize("where", BUILDERS)
@pytest.mark.parametrize("value", [NULL, UNSET], ids=["null", "unset"])
def test_null_only_where_the_reference_allows_it(where: str, value: struct_pb2.Value) -> None:
    """Null is an ignored filter and an unset attribute in a task output; an image's attribute
    cannot be null (reference §6.1)."""
    build, path, allow_null = BUILDERS[where]
    found = violations(build(value))
    if allow_null:
        assert found == []
    else:
        assert [f for f, _ in found] == [path] and "null" in found[0][1]


def test_many_bad_values_are_reported_up_to_the_limit() -> None:
    images = [image_pb2.Image(zarr_url=f"/z/{i}", attributes={"k": LIST}) for i in range(50)]
    request = image_service_pb2.AddImagesRequest(project_id=1, dataset_id=1, images=images)
    found = violations(request)
    assert 1 < len(found) <= 11
    assert found[0][0] == 'images[0].attributes["k"]'


def test_attribute_maps_do_not_count_against_the_struct_budget() -> None:
    """300,000 attribute values in one request are fine (Struct values are capped at 100,000
    per request; attribute values are not Struct values)."""
    request = image_service_pb2.AddImagesRequest(project_id=1, dataset_id=1)
    for i in range(100_000):
        image = request.images.add(zarr_url=f"/z/{i}")
        image.attributes["a"].string_value = "x"
        image.attributes["b"].number_value = i
        image.attributes["c"].bool_value = True
    assert violations(request) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"zarr_url": "/z/a", "attributes": {"well": "A01", "z": 3}}', []),
        ('{"zarr_url": "/z/a", "attributes": {"well": ["A01"]}}', ['images[0].attributes["well"]']),
        ('{"zarr_url": "/z/a", "attributes": {"well": null}}', ['images[0].attributes["well"]']),
    ],
)
def test_json_typed_by_people(text: str, expected: list[str]) -> None:
    image: Any = json_format.Parse(text, image_pb2.Image())
    request = image_service_pb2.AddImagesRequest(project_id=1, dataset_id=1, images=[image])
    assert [f for f, _ in violations(request)] == expected
