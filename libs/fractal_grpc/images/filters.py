"""Image filters: the Python side of the reference's matching rules (§6.2).

The same rules are implemented in SQL by :mod:`fractal_grpc.images.sql_filters`; both sides are
checked against one shared case table (``tests/filter_cases.py``).

Matching an image against ``attribute_filters`` and ``type_filters``:

- Type filters: for every ``(key, wanted)``, the image matches when "the image has ``key`` set
  to ``true``" equals ``wanted``. A missing type therefore counts as ``false``.
- Attribute filters: every ``(key, value)`` with ``value is None`` is ignored; for the others
  the image must have ``key`` with a value *equal* to ``value`` (definition below).
- The result is the AND of all conditions; empty filters match every image.

Equality of scalar values (a deliberate fix of a reference quirk)
-----------------------------------------------------------------
Python says ``True == 1 == 1.0``, so the reference lets the filter ``{"x": 1}`` select an
image with ``x = true`` (and vice versa). Here equality follows JSON, i.e. what PostgreSQL's
``jsonb`` does, so that the SQL and Python paths agree exactly:

- a boolean equals only a boolean (``true`` never equals ``1``);
- numbers compare by numeric value, ignoring int vs float (``1`` equals ``1.0``). Mixed
  int/float comparisons are made on the decimal value of the float's JSON text (its shortest
  ``repr``), which is what PostgreSQL's ``numeric`` compares: e.g. ``1e300`` equals
  ``10**300`` on both sides, although the binary float is not exactly ``10**300``;
- a string equals only the identical string (``"1"`` never equals ``1``);
- a non-finite float (NaN, ±inf) cannot be stored in JSON, so it never matches anything.

Filter keys follow the reference's ``valdictkeys``: they are stripped of surrounding
whitespace, must be non-empty, and must still be unique after stripping.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeAlias, TypedDict, TypeVar

__all__ = [
    "Filters",
    "ImageDict",
    "Scalar",
    "filter_images",
    "filters_equal",
    "match_filter",
    "merge_filters",
    "scalar_equal",
    "validate_attribute_filters",
    "validate_keys",
    "validate_type_filters",
]

Scalar: TypeAlias = int | float | str | bool

V = TypeVar("V")


class ImageDict(TypedDict):
    """An image as stored in a dataset's image list."""

    zarr_url: str
    origin: str | None
    attributes: dict[str, Any]
    types: dict[str, bool]


def validate_keys(d: Mapping[str, V], field: str) -> dict[str, V]:
    """Return a copy of ``d`` with stripped keys, in the same order.

    Raises ValueError if a key is not a string, is empty after stripping, or collides with
    another key after stripping.
    """
    result: dict[str, V] = {}
    for key, value in d.items():
        if not isinstance(key, str):
            raise ValueError(f"{field}: key {key!r} is not a string")
        stripped = key.strip()
        if not stripped:
            raise ValueError(f"{field}: key {key!r} is empty")
        if stripped in result:
            raise ValueError(
                f"{field}: key {key!r} is not unique (another key is also {stripped!r} "
                "once stripped)"
            )
        result[stripped] = value
    return result


def _is_scalar(value: object) -> bool:
    return isinstance(value, (bool, int, float, str))


def validate_attribute_filters(d: Mapping[str, Any], field: str = "attributes") -> dict[str, Any]:
    """Validate attribute filters: keys as in :func:`validate_keys`, values scalar or None."""
    result = validate_keys(d, field)
    for key, value in result.items():
        if value is not None and not _is_scalar(value):
            raise ValueError(
                f"{field}[{key!r}]: value {value!r} must be int, float, str, bool or null"
            )
    return result


def validate_type_filters(d: Mapping[str, Any], field: str = "types") -> dict[str, bool]:
    """Validate type filters: keys as in :func:`validate_keys`, values booleans."""
    result = validate_keys(d, field)
    for key, value in result.items():
        if not isinstance(value, bool):
            raise ValueError(f"{field}[{key!r}]: value {value!r} must be a boolean")
    return result


def _is_finite(number: float) -> bool:
    return not isinstance(number, float) or math.isfinite(number)


def _to_decimal(number: float) -> Decimal:
    # A float is taken at the value of its JSON text (shortest repr), like PostgreSQL does.
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


def scalar_equal(a: object, b: object) -> bool:
    """JSON-like equality of two scalars (see the module docstring)."""
    a_bool = isinstance(a, bool)
    b_bool = isinstance(b, bool)
    if a_bool or b_bool:
        return a_bool and b_bool and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not (_is_finite(a) and _is_finite(b)):
            return False
        if type(a) is type(b):
            return a == b
        return _to_decimal(a) == _to_decimal(b)
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return False
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    # Not a scalar (should not happen for validated data): fall back to Python equality.
    return a == b


def match_filter(
    image_attributes: Mapping[str, Any],
    image_types: Mapping[str, Any],
    attribute_filters: Mapping[str, Scalar | None],
    type_filters: Mapping[str, bool],
) -> bool:
    """Whether one image matches the filters (semantics in the module docstring)."""
    for key, wanted in type_filters.items():
        if (image_types.get(key) is True) != bool(wanted):
            return False
    for key, value in attribute_filters.items():
        if value is None:
            continue
        if key not in image_attributes or not scalar_equal(image_attributes[key], value):
            return False
    return True


def filter_images(
    images: Iterable[ImageDict],
    attribute_filters: Mapping[str, Scalar | None],
    type_filters: Mapping[str, bool],
) -> list[ImageDict]:
    """The images that match the filters, in input order.

    The returned list holds the input image objects themselves (no copies).
    """
    if not type_filters and all(v is None for v in attribute_filters.values()):
        return list(images)
    return [
        image
        for image in images
        if match_filter(image["attributes"], image["types"], attribute_filters, type_filters)
    ]


@dataclass(frozen=True)
class Filters:
    """A set of attribute and type filters (the reference's ``Filters`` model).

    Build it with :meth:`from_dict` to get validated, key-stripped copies. The dicts are not
    meant to be mutated; derive new instances instead.
    """

    attributes: dict[str, Scalar | None] = field(default_factory=dict)
    types: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Filters":
        """Validate ``{"attributes": {...}, "types": {...}}`` (both optional, no other keys)."""
        if data is None:
            return cls()
        extra = set(data) - {"attributes", "types"}
        if extra:
            raise ValueError(f"Filters: unexpected keys {sorted(extra)}")
        attributes = data.get("attributes") or {}
        types = data.get("types") or {}
        if not isinstance(attributes, Mapping):
            raise ValueError("Filters: 'attributes' must be an object")
        if not isinstance(types, Mapping):
            raise ValueError("Filters: 'types' must be an object")
        return cls(
            attributes=validate_attribute_filters(attributes),
            types=validate_type_filters(types),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: ``{"attributes": {...}, "types": {...}}``."""
        return {"attributes": dict(self.attributes), "types": dict(self.types)}

    def is_empty(self) -> bool:
        """True when the filters match every image."""
        return not self.types and all(v is None for v in self.attributes.values())


def merge_filters(dataset_filters: Filters, wftask_filters: Filters) -> Filters:
    """Pre-filters of a workflow task: the dataset's filters overridden key-by-key by the
    workflow task's input filters."""
    return Filters(
        attributes={**dataset_filters.attributes, **wftask_filters.attributes},
        types={**dataset_filters.types, **wftask_filters.types},
    )


def filters_equal(a: Filters, b: Filters) -> bool:
    """Whether two filters are identical, comparing values with :func:`scalar_equal`
    (so ``1`` equals ``1.0`` but not ``True``; ``None`` equals only ``None``)."""
    if a.attributes.keys() != b.attributes.keys() or a.types.keys() != b.types.keys():
        return False
    for key, value in a.attributes.items():
        other = b.attributes[key]
        if value is None or other is None:
            if value is not other:
                return False
        elif not scalar_equal(value, other):
            return False
    return all(scalar_equal(value, b.types[key]) for key, value in a.types.items())
