"""Attribute values between Python (as JSONB gives them back) and the proto oneof."""

from __future__ import annotations

import pytest

from fractal.v2 import image_pb2
from fractal_grpc.convert import attribute_to_python, python_to_attribute


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "bool_value"),
        (7, "int_value"),
        (2**63 - 1, "int_value"),
        (-(2**63), "int_value"),
        # JSONB writes the double 1e20 as 100000000000000000000 and gives it back as an int:
        # beyond int64 it is a double again, never an overflow.
        (10**20, "double_value"),
        (-(2**64), "double_value"),
        (1.5, "double_value"),
        ("A01", "string_value"),
    ],
)
def test_each_python_value_has_its_kind(value: object, kind: str) -> None:
    target = image_pb2.AttributeValue()
    python_to_attribute(value, target)  # type: ignore[arg-type]
    assert target.WhichOneof("kind") == kind
    assert attribute_to_python(target) == value
