"""Conversions between protobuf messages and the plain Python values the rules work on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
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


# Stored JSON that repeats from row to row (a job's project, workflow and dataset dumps are the
# same for every job of one workflow on one dataset) is converted once: ``Struct.update`` is
# pure Python and was most of the cost of a page of jobs.
_CACHED_KEY_BYTES = 4096


@lru_cache(maxsize=2048)
def _struct_bytes(key: bytes | str) -> bytes:
    value = orjson.loads(key)
    if not value:
        return b""
    target = struct_pb2.Struct()
    target.update(value)
    return target.SerializeToString()


def stored_json(value: Any) -> Any:
    """A JSON column's value as Python. Rows read through the ORM have it decoded; records of
    the raw pool (``store.RawStatement``) have PostgreSQL's text of it, decoded here. Our JSON
    columns hold objects, arrays or null, never a bare string, so a ``str`` is always text."""
    return orjson.loads(value) if isinstance(value, str) else value


def stored_json_to_struct(value: Mapping[str, Any] | str | None, target: struct_pb2.Struct) -> None:
    """``dict_to_struct`` for JSON read from the database (no NaN, string keys; a dict, or the
    text of a raw record, see ``stored_json``), with the conversions of small values that
    repeat remembered; the result is the same. An empty object or null leaves ``target``
    unset."""
    if not value:
        return
    key: bytes | str
    if isinstance(value, str):
        key = value  # PostgreSQL's jsonb text is canonical: equal values, equal text
    else:
        try:
            key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            key = b""
    if 0 < len(key) <= _CACHED_KEY_BYTES:
        wire = _struct_bytes(key)
        if wire:
            target.MergeFromString(wire)
    else:
        decoded = stored_json(value)
        if decoded:
            target.update(dict(decoded))


# An integral JSON number up to this size is read as an int; beyond, a double is not exact.
EXACT_INT = 2**53


def value_to_python(value: struct_pb2.Value) -> Scalar | None:
    """An attribute or filter value (a JSON scalar) as Python: integral numbers as ints.

    Null (or an unset Value) is None. Lists and objects never get here: the request validator
    refuses them in every map marked ``scalar_values``.
    """
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and -EXACT_INT <= number <= EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def python_to_value(value: Scalar | None, target: struct_pb2.Value) -> None:
    """Fill ``target`` with a scalar (None becomes JSON null)."""
    # bool first: bool is a subclass of int.
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    else:
        target.string_value = str(value)


def attributes_to_python(
    values: Mapping[str, struct_pb2.Value],
) -> dict[str, Scalar | None]:
    """A map of attribute values as a dict (``value_to_python`` inlined: this runs for every
    attribute of every image of an AddImages)."""
    result: dict[str, Scalar | None] = {}
    for key in values:  # iterating a map's keys is cheaper than its items() view
        value = values[key]
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            result[key] = value.string_value
        elif kind == "number_value":
            number = value.number_value
            exact = number.is_integer() and -EXACT_INT <= number <= EXACT_INT
            result[key] = int(number) if exact else number
        elif kind == "bool_value":
            result[key] = value.bool_value
        else:
            result[key] = None
    return result


def fill_attributes(target: Any, values: Mapping[str, Scalar | None]) -> None:
    """Fill a ``map<string, google.protobuf.Value>`` field."""
    for key, value in values.items():
        python_to_value(value, target[key])


def fill_values(target: struct_pb2.ListValue, values: Iterable[Scalar | None]) -> None:
    """Fill a ListValue (the distinct values of a facet)."""
    add = target.values.add
    for value in values:
        python_to_value(value, add())


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
