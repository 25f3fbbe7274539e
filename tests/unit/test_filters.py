"""Filter semantics, Python side (reference §6.2), and the SQL clause as compiled text."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

import math  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402
from sqlalchemy.dialects.postgresql import JSONB  # noqa: E402

from filter_cases import FILTER_CASES, FilterCase  # noqa: E402
from fractal_grpc.images.filters import (  # noqa: E402
    Filters,
    filter_images,
    filters_equal,
    match_filter,
    merge_filters,
    scalar_equal,
    validate_keys,
)
from fractal_grpc.images.sql_filters import image_filter_clause  # noqa: E402


def test_case_table_is_big_enough_and_named_uniquely() -> None:
    assert len(FILTER_CASES) >= 20
    names = [case.name for case in FILTER_CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_filter_images(case: FilterCase) -> None:
    result = filter_images(case.images, case.attribute_filters, case.type_filters)
    assert [image["zarr_url"] for image in result] == case.expected


@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_match_filter_agrees_with_filter_images(case: FilterCase) -> None:
    matched = [
        image["zarr_url"]
        for image in case.images
        if match_filter(
            image["attributes"], image["types"], case.attribute_filters, case.type_filters
        )
    ]
    assert matched == case.expected


def test_filter_images_returns_the_input_objects() -> None:
    images = FILTER_CASES[0].images
    assert all(a is b for a, b in zip(filter_images(images, {}, {}), images, strict=True))
    assert filter_images(iter(images), {}, {}) == images


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1, True),
        (1, 1.0, True),
        (1.0, 1, True),
        (0, -0.0, True),
        (True, 1, False),
        (1, True, False),
        (1.0, True, False),
        (False, 0, False),
        (True, True, True),
        (False, False, True),
        (True, False, False),
        ("1", 1, False),
        (1, "1", False),
        ("a", "a", True),
        ("a", "A", False),
        (0.1 + 0.2, 0.3, False),
        (10**300, 1e300, True),
        (2**53 + 1, float(2**53), False),
        (float("nan"), float("nan"), False),
        (float("inf"), float("inf"), False),
        (float("-inf"), -(10**400), False),
    ],
)
def test_scalar_equal(a: Any, b: Any, equal: bool) -> None:
    assert scalar_equal(a, b) is equal
    assert scalar_equal(b, a) is equal


def test_non_finite_filter_value_matches_nothing() -> None:
    assert not match_filter({"x": math.inf}, {}, {"x": math.inf}, {})
    assert not match_filter({"x": math.nan}, {}, {"x": math.nan}, {})


def test_type_values_are_compared_to_true() -> None:
    # Only a stored boolean true counts as "type set", as in SQL (`types @> {"k": true}`).
    assert match_filter({}, {"t": True}, {}, {"t": True})
    assert not match_filter({}, {"t": 1}, {}, {"t": True})
    assert match_filter({}, {"t": 1}, {}, {"t": False})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {}),
        ({"a": 1, "b": 2}, {"a": 1, "b": 2}),
        ({" a ": 1, "b\t": 2}, {"a": 1, "b": 2}),
        ({"région": 1}, {"région": 1}),
    ],
)
def test_validate_keys_strips(data: dict[str, Any], expected: dict[str, Any]) -> None:
    result = validate_keys(data, "attributes")
    assert result == expected
    assert list(result) == list(expected)
    assert result is not data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"": 1}, "attributes: key '' is empty"),
        ({"   ": 1}, "attributes: key '   ' is empty"),
        ({"a": 1, " a": 2}, "attributes: key ' a' is not unique"),
        ({"a ": 1, " a": 2}, "attributes: key ' a' is not unique"),
        ({1: 1}, "attributes: key 1 is not a string"),
    ],
)
def test_validate_keys_refuses(data: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as exc_info:
        validate_keys(data, "attributes")
    assert fragment in str(exc_info.value)


def test_filters_from_dict_and_to_dict() -> None:
    filters = Filters.from_dict({"attributes": {" well ": "A01", "n": None}, "types": {"3D": True}})
    assert filters == Filters(attributes={"well": "A01", "n": None}, types={"3D": True})
    assert filters.to_dict() == {"attributes": {"well": "A01", "n": None}, "types": {"3D": True}}
    assert Filters.from_dict(None) == Filters()
    assert Filters.from_dict({}) == Filters()
    assert Filters().to_dict() == {"attributes": {}, "types": {}}
    assert Filters.from_dict(filters.to_dict()) == filters


def test_filters_to_dict_is_a_copy() -> None:
    filters = Filters(attributes={"a": 1}, types={"t": True})
    data = filters.to_dict()
    data["attributes"]["b"] = 2
    data["types"]["u"] = False
    assert filters == Filters(attributes={"a": 1}, types={"t": True})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"attributes": {}, "other": {}}, "unexpected keys ['other']"),
        ({"attributes": {"a": [1]}}, "attributes['a']"),
        ({"attributes": {"a": {"b": 1}}}, "attributes['a']"),
        ({"types": {"t": 1}}, "types['t']"),
        ({"types": {"t": None}}, "types['t']"),
        ({"types": {"": True}}, "types: key '' is empty"),
        ({"attributes": [1]}, "'attributes' must be an object"),
        ({"types": "x"}, "'types' must be an object"),
    ],
)
def test_filters_from_dict_refuses(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as exc_info:
        Filters.from_dict(data)
    assert fragment in str(exc_info.value)


def test_filters_is_empty() -> None:
    assert Filters().is_empty()
    assert Filters(attributes={"a": None}).is_empty()
    assert not Filters(attributes={"a": 1}).is_empty()
    assert not Filters(types={"t": False}).is_empty()


def test_merge_filters_wftask_overrides_dataset() -> None:
    dataset = Filters(attributes={"plate": "p.zarr", "well": "A01"}, types={"3D": False, "x": True})
    wftask = Filters(attributes={"well": None, "n": 1}, types={"3D": True})
    merged = merge_filters(dataset, wftask)
    assert merged == Filters(
        attributes={"plate": "p.zarr", "well": None, "n": 1},
        types={"3D": True, "x": True},
    )
    # Inputs unchanged.
    assert dataset.types == {"3D": False, "x": True}
    assert merge_filters(Filters(), Filters()) == Filters()


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (Filters(), Filters(), True),
        (Filters(attributes={"a": 1}), Filters(attributes={"a": 1.0}), True),
        (Filters(attributes={"a": 1}), Filters(attributes={"a": True}), False),
        (Filters(attributes={"a": None}), Filters(attributes={"a": None}), True),
        (Filters(attributes={"a": None}), Filters(), False),
        (Filters(attributes={"a": None}), Filters(attributes={"a": 0}), False),
        (Filters(types={"t": True}), Filters(types={"t": True}), True),
        (Filters(types={"t": True}), Filters(types={"t": False}), False),
        (Filters(types={"t": True}), Filters(types={"u": True}), False),
        (
            Filters(attributes={"a": "x", "b": 2}, types={"t": True, "u": False}),
            Filters(attributes={"b": 2, "a": "x"}, types={"u": False, "t": True}),
            True,
        ),
    ],
)
def test_filters_equal(a: Filters, b: Filters, equal: bool) -> None:
    assert filters_equal(a, b) is equal
    assert filters_equal(b, a) is equal


# --- SQL clause, compiled (the database run is in tests/service/test_sql_filters.py) ---

_TABLE = sa.table("images", sa.column("attributes", JSONB), sa.column("types", JSONB))


def _compile(clause: sa.ColumnElement[bool]) -> tuple[str, dict[str, Any]]:
    compiled = sa.select(_TABLE.c.attributes).where(clause).compile(dialect=postgresql.dialect())
    return str(compiled), dict(compiled.params)


def test_sql_clause_empty_filters_is_true() -> None:
    for attribute_filters in ({}, {"a": None}):
        clause = image_filter_clause(_TABLE.c.attributes, _TABLE.c.types, attribute_filters, {})
        assert str(clause.compile(dialect=postgresql.dialect())) == "true"


def test_sql_clause_non_finite_value_is_false() -> None:
    clause = image_filter_clause(_TABLE.c.attributes, _TABLE.c.types, {"a": math.inf}, {})
    assert str(clause.compile(dialect=postgresql.dialect())) == "false"


def test_sql_clause_shape_and_bound_parameters() -> None:
    clause = image_filter_clause(
        _TABLE.c.attributes,
        _TABLE.c.types,
        {"well": "A'01", "n": 1, "skip": None},
        {"3D": True, "illumination_correction": False, "registered": False},
    )
    sql, params = _compile(clause)
    assert "A'01" not in sql and "3D" not in sql and "illumination_correction" not in sql
    assert sql.count("images.attributes @>") == 1
    assert sql.count("images.types @>") == 3
    assert sql.count("NOT (images.types @>") == 2
    assert sorted(params.values(), key=repr) == sorted(
        [
            {"well": "A'01", "n": 1},
            {"3D": True},
            {"illumination_correction": True},
            {"registered": True},
        ],
        key=repr,
    )


def test_sql_clause_single_condition_has_no_and() -> None:
    clause = image_filter_clause(_TABLE.c.attributes, _TABLE.c.types, {}, {"t": False})
    sql, params = _compile(clause)
    assert " AND " not in sql
    assert list(params.values()) == [{"t": True}]
