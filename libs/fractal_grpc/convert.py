"""Conversions between protobuf messages and the plain Python values the rules work on."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from fractal.v2 import image_pb2

Scalar = int | float | str | bool


def json_numbers(value: Any) -> Any:
    """Undo Struct's "every number is a double": integral floats become ints again.

    Free-form JSON (task args, meta, schemas) travels as ``google.protobuf.Struct``; a task that
    declares ``num_images: int`` must receive ``2``, not ``2.0``. JSON itself does not tell 2
    from 2.0, so neither do we: this is applied wherever a Struct enters the system.
    """
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_numbers(item) for item in value]
    return value


def struct_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict, integral numbers as ints."""
    result: dict[str, Any] = json_numbers(json_format.MessageToDict(value))
    return result


def struct_to_dict(value: struct_pb2.Struct, present: bool = True) -> dict[str, Any] | None:
    """An optional Struct field as a dict; ``None`` when the field is unset (``present``)."""
    return struct_dict(value) if present else None


def dict_to_struct(value: Mapping[str, Any] | None, target: struct_pb2.Struct) -> None:
    """Fill ``target`` from ``value`` (nothing for None)."""
    if value:
        target.update(dict(value))


def attribute_to_python(value: image_pb2.AttributeValue) -> Scalar | None:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: Scalar = getattr(value, kind)
    return result


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def python_to_attribute(value: Scalar | None, target: image_pb2.AttributeValue) -> None:
    # bool first: bool is a subclass of int.
    if value is None:
        return
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        target.int_value = value
    elif isinstance(value, int | float):
        # A double given as an integral number beyond int64 (1e20) comes back from JSONB as
        # an int: it stays a double.
        target.double_value = value
    else:
        target.string_value = str(value)


def attributes_to_python(
    values: Mapping[str, image_pb2.AttributeValue],
) -> dict[str, Scalar | None]:
    return {key: attribute_to_python(v) for key, v in values.items()}


def fill_attributes(target: Any, values: Mapping[str, Scalar | None]) -> None:
    """Fill a ``map<string, AttributeValue>`` field."""
    for key, value in values.items():
        python_to_attribute(value, target[key])


def filters_to_dict(filters: image_pb2.Filters) -> dict[str, dict[str, Any]]:
    return {
        "attributes": attributes_to_python(filters.attributes),
        "types": dict(filters.types),
    }


def fill_filters(target: image_pb2.Filters, filters: Mapping[str, Any] | None) -> None:
    if not filters:
        return
    fill_attributes(target.attributes, filters.get("attributes") or {})
    target.types.update(filters.get("types") or {})


def fill_image(target: image_pb2.Image, image: Any) -> None:
    """Fill from a mapping with zarr_url, origin, attributes and types (a dict or a row)."""
    target.zarr_url = image["zarr_url"]
    if image.get("origin") is not None:
        target.origin = image["origin"]
    fill_attributes(target.attributes, image.get("attributes") or {})
    target.types.update(image.get("types") or {})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A (timezone-aware; naive means UTC) datetime as a Timestamp, in integer arithmetic."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )
