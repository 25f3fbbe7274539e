"""Filter semantics, bitmap side: the facet bitmaps answer every shared filter case like the
Python and SQL implementations do."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

import pytest  # noqa: E402
from pyroaring import BitMap64  # noqa: E402

from filter_cases import FILTER_CASES, FilterCase  # noqa: E402
from fractal_grpc.images.bitmaps import (  # noqa: E402
    ALL,
    build_members,
    canonical_json,
    image_facet_keys,
    plan_filters,
)


@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_filter_case(case: FilterCase) -> None:
    members = build_members(
        (position, image["attributes"], image["types"])
        for position, image in enumerate(case.images)
    )
    plan = plan_filters({"attributes": case.attribute_filters, "types": case.type_filters})
    matches = plan.combine({key: members[key] for key in plan.needed if key in members})
    assert [case.images[p]["zarr_url"] for p in matches] == case.expected


def test_integral_floats_share_the_facet_of_the_integer() -> None:
    assert canonical_json(1.0) == canonical_json(1) == "1"
    assert canonical_json(-0.0) == "0"
    assert canonical_json(1.5) == "1.5"
    assert canonical_json(True) == "true" != canonical_json(1)
    assert canonical_json(1e300) == canonical_json(10**300) == "1" + "0" * 300
    assert canonical_json(1e-7) == "1E-7"
    # 2.0**60 is written 1.152921504606847e+18: as JSON, not the integer 2**60.
    assert canonical_json(2.0**60) == "1152921504606847000" != canonical_json(2**60)


def test_facet_keys_of_an_image() -> None:
    keys = image_facet_keys({"well": "A01", "n": 2.0}, {"3D": True, "raw": False})
    assert keys == [
        ("a", "well", '"A01"'),
        ("a", "n", "2"),
        ("t", "3D", "true"),
        ("t", "raw", "false"),
    ]


def test_filter_sets_intersect() -> None:
    members = build_members(
        [(0, {"w": "a"}, {"x": True}), (5, {"w": "a"}, {}), (9, {"w": "b"}, {"x": True})]
    )
    assert list(members[ALL]) == [0, 5, 9]
    both = plan_filters({"attributes": {"w": "a"}}, {"types": {"x": True}})
    assert list(both.combine(members)) == [0]
    contradiction = plan_filters({"types": {"x": True}}, {"types": {"x": False}})
    assert list(contradiction.combine(members)) == []
    only_false = plan_filters({"types": {"x": False}})
    assert only_false.needed == [ALL, ("t", "x", "true")]
    assert list(only_false.combine(members)) == [5]
    assert list(plan_filters(None, {}).combine(members)) == [0, 5, 9]


def test_missing_facets_and_non_finite_values_match_nothing() -> None:
    members = build_members([(0, {"w": "a"}, {})])
    assert list(plan_filters({"attributes": {"w": "zzz"}}).combine(members)) == []
    nan = plan_filters({"attributes": {"w": float("nan")}})
    assert nan.nothing and nan.needed == [] and nan.combine(members) == BitMap64()
    # A None attribute filter is no filter.
    assert list(plan_filters({"attributes": {"w": None}}).combine(members)) == [0]
