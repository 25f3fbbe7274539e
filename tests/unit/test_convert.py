"""Attribute values between Python (as JSONB gives them back) and google.protobuf.Value,
and their JSON form (what grpcurl users type)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format, struct_pb2

from fractal.v2 import image_pb2, job_pb2
from fractal_grpc.convert import (
    attributes_to_python,
    dict_to_struct,
    fill_image,
    python_to_value,
    stored_json,
    stored_json_to_struct,
    value_to_python,
)


@pytest.mark.parametrize(
    ("value", "kind", "back"),
    [
        (True, "bool_value", True),
        (False, "bool_value", False),
        (7, "number_value", 7),
        (0, "number_value", 0),
        (-(2**53), "number_value", -(2**53)),
        # An integral number is an int, whichever way it was written.
        (3.0, "number_value", 3),
        (1.5, "number_value", 1.5),
        # Beyond 2^53 a number is a double (JSON numbers are); JSONB may give it back as an int.
        (10**20, "number_value", 1e20),
        ("A01", "string_value", "A01"),
        ("", "string_value", ""),
        (None, "null_value", None),
    ],
)
def test_each_python_value_has_its_kind(value: object, kind: str, back: object) -> None:
    target = struct_pb2.Value()
    python_to_value(value, target)  # type: ignore[arg-type]
    assert target.WhichOneof("kind") == kind
    result = value_to_python(target)
    assert result == back and type(result) is type(back)


def test_an_unset_value_is_null() -> None:
    assert value_to_python(struct_pb2.Value()) is None


def test_image_json_reads_like_the_reference() -> None:
    text = (
        '{"zarr_url": "/z/a.zarr/A/01/0", "attributes": {"well": "A01", "z": 3, "r": 0.5, '
        '"ok": true}, "types": {"3D": true}}'
    )
    image = json_format.Parse(text, image_pb2.Image())
    assert attributes_to_python(image.attributes) == {"well": "A01", "z": 3, "r": 0.5, "ok": True}
    assert type(attributes_to_python(image.attributes)["z"]) is int
    assert dict(image.types) == {"3D": True}


def test_image_round_trips_through_json() -> None:
    image = image_pb2.Image()
    fill_image(
        image,
        {"zarr_url": "/z/b", "origin": "/z/a", "attributes": {"w": "B02", "n": 2}, "types": {}},
    )
    data = json_format.MessageToDict(image, preserving_proto_field_name=True)
    assert data == {"zarr_url": "/z/b", "origin": "/z/a", "attributes": {"w": "B02", "n": 2.0}}
    again = json_format.ParseDict(data, image_pb2.Image())
    assert attributes_to_python(again.attributes) == {"w": "B02", "n": 2}


def test_filters_json_keeps_null() -> None:
    filters = json_format.Parse(
        '{"attributes": {"well": "A01", "skip": null}, "types": {"3D": false}}',
        image_pb2.Filters(),
    )
    assert attributes_to_python(filters.attributes) == {"well": "A01", "skip": None}
    assert dict(filters.types) == {"3D": False}


@pytest.mark.parametrize(
    "value",
    [
        None,
        {},
        {"id": 1, "name": "p", "timestamp_created": "2026-01-01T00:00:00+00:00"},
        {"zarr_dir": "/z", "filters": {"attributes": {"well": "A01", "z": 3}, "types": {}}},
        {"n": 1.5, "big": 10**20, "flag": False, "none": None, "list": [1, "a", [2.0, {}]]},
        # Too large to remember: converted directly, same result.
        {"schema": {"properties": {f"p{i}": {"type": "string"} for i in range(400)}}},
    ],
)
def test_stored_json_to_struct_is_dict_to_struct(value):
    expected = struct_pb2.Struct()
    dict_to_struct(value, expected)
    # As a dict (read through the ORM) and as its text (a record of the raw pool; PostgreSQL
    # sends jsonb as text), each twice: the second time from what the first remembered.
    for form in (value, json.dumps(value)):
        for _ in range(2):
            got = struct_pb2.Struct()
            stored_json_to_struct(form, got)
            assert got == expected


@pytest.mark.parametrize("value", [None, {}, "{}", "null"])
def test_stored_json_to_struct_leaves_an_empty_value_unset(value):
    job = job_pb2.Job()
    stored_json_to_struct(value, job.project_dump)
    assert not job.HasField("project_dump")


def test_stored_json_reads_both_forms():
    assert stored_json('{"a": [1, 2.5]}') == {"a": [1, 2.5]} == stored_json({"a": [1, 2.5]})
    assert stored_json("null") is None and stored_json(None) is None


def test_stored_json_to_struct_keeps_equal_values_apart():
    one, other = struct_pb2.Struct(), struct_pb2.Struct()
    stored_json_to_struct({"a": 1, "b": "x"}, one)
    stored_json_to_struct({"a": 1, "b": "y"}, other)
    assert one["b"] == "x" and other["b"] == "y"
    # Key order does not matter to a Struct, and the remembered form is shared.
    again = struct_pb2.Struct()
    stored_json_to_struct({"b": "x", "a": 1}, again)
    assert again == one
