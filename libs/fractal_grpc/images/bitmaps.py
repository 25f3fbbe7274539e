"""Facet membership bitmaps: the image filters answered from per-value position sets.

Every image of a dataset has a ``position`` (its place in the list, never reused). For every
*facet* of the dataset — an attribute key with one value, a type key with one value — the api
keeps the set of positions of the images that have it, as a roaring bitmap (pyroaring), plus
one set with every image (:data:`ALL`). A filter is then a few set operations on those bitmaps
instead of a scan of the images:

- an attribute filter ``k = v`` (v not None) → the facet ``("a", k, v)``;
- a type filter ``k: true`` → the facet ``("t", k, true)``;
- a type filter ``k: false`` → :data:`ALL` minus ``("t", k, true)`` (a missing type is false);
- several filters (and the dataset's filters on top) → the intersection.

The semantics are those of :mod:`fractal_grpc.images.filters` and of the SQL condition in
:mod:`fractal_grpc.images.sql_filters`: values compare as JSON values (``true`` is not ``1``,
``"1"`` is not ``1``, ``1`` equals ``1.0``), a None attribute filter is no filter, and a
non-finite number matches nothing. The three must pass the same table of cases
(``tests/filter_cases.py``).

A facet is keyed by ``(kind, key, canonical JSON of the value)``; :func:`canonical_json` gives
equal JSON numbers one text, so that ``1`` and ``1.0`` share a facet, as they share a ``jsonb``
value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from pyroaring import BitMap64

__all__ = [
    "ALL",
    "FacetKey",
    "FilterPlan",
    "build_members",
    "canonical_json",
    "image_facet_keys",
    "json_text",
    "note_shown_numbers",
    "plan_filters",
]

FacetKey = tuple[str, str, str]
"""(kind, key, value as canonical JSON); kind is "a" (attribute), "t" (type) or "*"."""

ALL: FacetKey = ("*", "", "true")
"""The facet every image has: the whole list."""


def canonical_json(value: Any) -> str:
    """JSON text of a scalar attribute value, one text per JSON value: numbers are compared by
    the decimal value of their JSON text (as ``jsonb`` does), so ``1``, ``1.0`` and ``1e0`` all
    give ``1``, and ``1e300`` gives the same as ``10**300``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return orjson.dumps(value).decode()
    if isinstance(value, int):
        return str(value)
    number = Decimal(repr(value)).normalize()  # repr: the shortest text that round-trips
    if number == number.to_integral_value():
        return str(int(number))
    return str(number)


def json_text(value: Any) -> str:
    """The JSON text of a value as given (``1.0`` stays ``1.0``)."""
    return orjson.dumps(value).decode()


def note_shown_numbers(shown: dict[FacetKey, str], attributes: Mapping[str, Any]) -> None:
    """Record in ``shown`` how each numeric facet of ``attributes`` is listed: as the first
    image that has it gives it (``1`` and ``1.0`` share the facet keyed ``1``; it lists
    whichever came first). Keys already in ``shown`` stay."""
    for key, value in attributes.items():
        kind = type(value)
        if kind is float:
            shown.setdefault(("a", key, canonical_json(value)), json_text(value))
        elif kind is int:
            text = str(value)
            shown.setdefault(("a", key, text), text)


def image_facet_keys(attributes: Mapping[str, Any], types: Mapping[str, Any]) -> list[FacetKey]:
    """The facets of one image (without :data:`ALL`)."""
    keys = [("a", key, canonical_json(value)) for key, value in attributes.items()]
    keys += [("t", key, "true" if value else "false") for key, value in types.items()]
    return keys


def build_members(
    rows: Iterable[tuple[int, Mapping[str, Any], Mapping[str, Any]]],
) -> dict[FacetKey, BitMap64]:
    """Every facet's bitmap, :data:`ALL` included, from ``(position, attributes, types)``
    rows: what the incremental maintenance must always equal."""
    lists: dict[FacetKey, list[int]] = {ALL: []}
    every = lists[ALL]
    for position, attributes, types in rows:
        every.append(position)
        for key in image_facet_keys(attributes, types):
            lists.setdefault(key, []).append(position)
    members = {key: BitMap64(positions) for key, positions in lists.items()}
    for bitmap in members.values():
        bitmap.run_optimize()
    return members


@dataclass
class FilterPlan:
    """Which facets a filter needs, and how to combine them."""

    required: list[FacetKey] = field(default_factory=list)
    """Facets every match must have (attribute filters, true type filters)."""
    excluded: list[FacetKey] = field(default_factory=list)
    """Facets no match may have (the ``true`` facet of each false type filter)."""
    nothing: bool = False
    """The filter can match no image (a non-finite number)."""

    @property
    def needed(self) -> list[FacetKey]:
        """The facets to load: the required and excluded ones, and ALL when nothing is
        required (the matches are then "every image but the excluded ones")."""
        if self.nothing:
            return []
        base = self.required or [ALL]
        return list(dict.fromkeys([*base, *self.excluded]))

    def combine(self, loaded: Mapping[FacetKey, BitMap64]) -> BitMap64:
        """The matching positions, given the bitmaps of :attr:`needed` (a facet missing from
        ``loaded`` has no image)."""
        if self.nothing:
            return BitMap64()
        base = self.required or [ALL]
        bitmaps = [loaded.get(key) for key in base]
        if any(b is None for b in bitmaps):
            return BitMap64()
        present = sorted((b for b in bitmaps if b is not None), key=len)
        result = BitMap64(present[0])
        for bitmap in present[1:]:
            result &= bitmap
            if not result:
                return result
        for key in self.excluded:
            excluded = loaded.get(key)
            if excluded is not None:
                result -= excluded
        return result


def plan_filters(*filter_sets: Mapping[str, Any] | None) -> FilterPlan:
    """The plan of the intersection of filter dicts ``{"attributes": {...}, "types": {...}}``
    (None or empty: no filter)."""
    plan = FilterPlan()
    for filters in filter_sets:
        if not filters:
            continue
        for key, value in (filters.get("attributes") or {}).items():
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                plan.nothing = True
                continue
            plan.required.append(("a", key, canonical_json(value)))
        for key, wanted in (filters.get("types") or {}).items():
            (plan.required if wanted else plan.excluded).append(("t", key, "true"))
    plan.required = list(dict.fromkeys(plan.required))
    return plan
