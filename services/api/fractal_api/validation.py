"""Request checks shared by several servicers: names, paths, filters, images."""

from __future__ import annotations

from typing import Any

from fractal.v2 import image_pb2
from fractal_grpc.convert import filters_to_dict
from fractal_grpc.grpckit.errors import Violations
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.images.urls import normalize_url


def name(value: str, field: str, violations: Violations) -> str:
    stripped = value.strip()
    if not stripped:
        violations.add(field, "must not be empty")
    return stripped


def url(value: str, field: str, violations: Violations) -> str:
    try:
        return normalize_url(value)
    except ValueError as exc:
        violations.add(field, str(exc))
        return value


def filters(msg: image_pb2.Filters, field: str, violations: Violations) -> dict[str, Any]:
    """Filters as a dict; keys must be non-empty and unique after stripping."""
    result = filters_to_dict(msg)
    for part in ("attributes", "types"):
        try:
            result[part] = validate_keys(result[part], f"{field}.{part}")
        except ValueError as exc:
            violations.add(f"{field}.{part}", str(exc))
    return result
