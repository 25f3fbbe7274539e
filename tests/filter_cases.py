"""The shared table of image-filter cases.

Both implementations of the filter semantics must pass every case: the Python one
(``tests/unit/test_filters.py``) and the SQL one against PostgreSQL
(``tests/service/test_sql_filters.py``). Images here must be storable as JSON (finite numbers,
no null attribute values). ``expected`` lists the matching zarr_urls in input order.
"""

from dataclasses import dataclass, field
from typing import Any

from fractal_grpc.images.filters import ImageDict, Scalar

__all__ = ["FILTER_CASES", "FilterCase", "image"]


def image(
    name: str,
    attributes: dict[str, Any] | None = None,
    types: dict[str, bool] | None = None,
    origin: str | None = None,
) -> ImageDict:
    """An image under ``/zarr`` named ``name``."""
    return {
        "zarr_url": f"/zarr/{name}",
        "origin": origin,
        "attributes": dict(attributes or {}),
        "types": dict(types or {}),
    }


@dataclass(frozen=True)
class FilterCase:
    name: str
    images: list[ImageDict]
    attribute_filters: dict[str, Scalar | None] = field(default_factory=dict)
    type_filters: dict[str, bool] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.name


def _urls(*names: str) -> list[str]:
    return [f"/zarr/{name}" for name in names]


# A small plate: two 3D images, one MIP, one image without types.
_PLATE = [
    image("p.zarr/A/01/0", {"plate": "p.zarr", "well": "A01", "n": 1}, {"3D": True}),
    image(
        "p.zarr/A/02/0",
        {"plate": "p.zarr", "well": "A02", "n": 2},
        {"3D": True, "illumination_correction": True},
    ),
    image(
        "p_mip.zarr/A/01/0",
        {"plate": "p_mip.zarr", "well": "A01", "n": 1},
        {"3D": False, "illumination_correction": True},
    ),
    image("other/0", {"well": "A01"}),
]

# The same key holding values of every scalar kind that Python would call "equal" to 1 or 0.
_MIXED = [
    image("bool_true", {"x": True}),
    image("int_one", {"x": 1}),
    image("float_one", {"x": 1.0}),
    image("str_one", {"x": "1"}),
    image("bool_false", {"x": False}),
    image("int_zero", {"x": 0}),
    image("float_zero", {"x": 0.0}),
    image("neg_float_zero", {"x": -0.0}),
    image("str_true", {"x": "true"}),
    image("no_x", {"y": 1}),
]

FILTER_CASES: list[FilterCase] = [
    FilterCase("empty filters match all", _PLATE, {}, {}, [img["zarr_url"] for img in _PLATE]),
    FilterCase("empty image list", [], {"plate": "p.zarr"}, {"3D": True}, []),
    FilterCase(
        "only None attribute filters match all",
        _PLATE,
        {"plate": None, "well": None},
        {},
        [img["zarr_url"] for img in _PLATE],
    ),
    FilterCase(
        "None attribute filter ignored beside another",
        _PLATE,
        {"plate": None, "well": "A01"},
        {},
        _urls("p.zarr/A/01/0", "p_mip.zarr/A/01/0", "other/0"),
    ),
    FilterCase(
        "type true matches only true",
        _PLATE,
        {},
        {"3D": True},
        _urls("p.zarr/A/01/0", "p.zarr/A/02/0"),
    ),
    FilterCase(
        "type false matches false and missing",
        _PLATE,
        {},
        {"3D": False},
        _urls("p_mip.zarr/A/01/0", "other/0"),
    ),
    FilterCase(
        "missing type counts as false",
        _PLATE,
        {},
        {"illumination_correction": False},
        _urls("p.zarr/A/01/0", "other/0"),
    ),
    FilterCase(
        "type filter on a key no image has",
        _PLATE,
        {},
        {"registered": False},
        [img["zarr_url"] for img in _PLATE],
    ),
    FilterCase(
        "type true on a key no image has",
        _PLATE,
        {},
        {"registered": True},
        [],
    ),
    FilterCase(
        "two type filters AND",
        _PLATE,
        {},
        {"3D": True, "illumination_correction": True},
        _urls("p.zarr/A/02/0"),
    ),
    FilterCase(
        "true and false type filters AND",
        _PLATE,
        {},
        {"illumination_correction": True, "3D": False},
        _urls("p_mip.zarr/A/01/0"),
    ),
    FilterCase(
        "string attribute",
        _PLATE,
        {"plate": "p.zarr"},
        {},
        _urls("p.zarr/A/01/0", "p.zarr/A/02/0"),
    ),
    FilterCase(
        "string attribute is case sensitive",
        _PLATE,
        {"plate": "P.ZARR"},
        {},
        [],
    ),
    FilterCase(
        "int attribute",
        _PLATE,
        {"n": 2},
        {},
        _urls("p.zarr/A/02/0"),
    ),
    FilterCase(
        "several attribute keys AND",
        _PLATE,
        {"plate": "p.zarr", "well": "A01"},
        {},
        _urls("p.zarr/A/01/0"),
    ),
    FilterCase(
        "attributes and types AND",
        _PLATE,
        {"well": "A01", "n": 1},
        {"illumination_correction": True},
        _urls("p_mip.zarr/A/01/0"),
    ),
    FilterCase(
        "attribute filter excludes images without the key",
        _PLATE,
        {"n": 1},
        {},
        _urls("p.zarr/A/01/0", "p_mip.zarr/A/01/0"),
    ),
    FilterCase(
        "no match",
        _PLATE,
        {"well": "H12"},
        {},
        [],
    ),
    FilterCase(
        "no match when attributes and types contradict",
        _PLATE,
        {"plate": "p_mip.zarr"},
        {"3D": True},
        [],
    ),
    FilterCase(
        "int 1 matches int 1 and float 1.0, not true nor '1'",
        _MIXED,
        {"x": 1},
        {},
        _urls("int_one", "float_one"),
    ),
    FilterCase(
        "float 1.0 matches float 1.0 and int 1",
        _MIXED,
        {"x": 1.0},
        {},
        _urls("int_one", "float_one"),
    ),
    FilterCase(
        "true matches only the boolean true",
        _MIXED,
        {"x": True},
        {},
        _urls("bool_true"),
    ),
    FilterCase(
        "false matches only the boolean false",
        _MIXED,
        {"x": False},
        {},
        _urls("bool_false"),
    ),
    FilterCase(
        "int 0 matches 0, 0.0 and -0.0, not false",
        _MIXED,
        {"x": 0},
        {},
        _urls("int_zero", "float_zero", "neg_float_zero"),
    ),
    FilterCase(
        "string '1' matches only the string",
        _MIXED,
        {"x": "1"},
        {},
        _urls("str_one"),
    ),
    FilterCase(
        "string 'true' is not the boolean",
        _MIXED,
        {"x": "true"},
        {},
        _urls("str_true"),
    ),
    FilterCase(
        "float attribute",
        [
            image("a", {"z": 0.1}),
            image("b", {"z": 0.30000000000000004}),
            image("c", {"z": 0.3}),
            image("d", {"z": 1.5}),
        ],
        {"z": 0.3},
        {},
        _urls("c"),
    ),
    FilterCase(
        "large and negative numbers",
        [
            image("big_int", {"v": 10**300}),
            image("big_float", {"v": 1e300}),
            image("neg", {"v": -7}),
            image("neg_float", {"v": -7.0}),
            image("exact_2_53_plus_1", {"w": 2**53 + 1}),
            image("float_2_53", {"w": float(2**53)}),
        ],
        {"v": 1e300},
        {},
        _urls("big_int", "big_float"),
    ),
    FilterCase(
        "int above 2**53 is compared exactly",
        [
            image("exact_2_53_plus_1", {"w": 2**53 + 1}),
            image("float_2_53", {"w": float(2**53)}),
            image("exact_2_53", {"w": 2**53}),
        ],
        {"w": 2**53 + 1},
        {},
        _urls("exact_2_53_plus_1"),
    ),
    FilterCase(
        "negative number",
        [image("neg", {"v": -7}), image("neg_float", {"v": -7.0}), image("pos", {"v": 7})],
        {"v": -7},
        {},
        _urls("neg", "neg_float"),
    ),
    FilterCase(
        "empty string value",
        [image("empty", {"s": ""}), image("space", {"s": " "}), image("none", {})],
        {"s": ""},
        {},
        _urls("empty"),
    ),
    FilterCase(
        "unicode keys and values",
        [
            image("ü1", {"région": "Zürich", "温度": 37}, {"🔬": True}),
            image("ü2", {"région": "Zurich", "温度": 37}, {"🔬": True}),
            image("ü3", {"région": "Zürich", "温度": 37.0}),
        ],
        {"région": "Zürich", "温度": 37},
        {"🔬": True},
        _urls("ü1"),
    ),
    FilterCase(
        "unicode type filter false",
        [
            image("ü1", {}, {"🔬": True}),
            image("ü2", {}, {"🔬": False}),
            image("ü3", {}, {"μ": True}),
        ],
        {},
        {"🔬": False},
        _urls("ü2", "ü3"),
    ),
    FilterCase(
        "keys with quotes, dots and SQL",
        [
            image("q1", {"it's": 'a"b', "a.b": 1, "x'); DROP TABLE images; --": "y"}),
            image("q2", {"it's": "a'b", "a.b": 1}),
        ],
        {"it's": 'a"b', "a.b": 1, "x'); DROP TABLE images; --": "y"},
        {},
        _urls("q1"),
    ),
    FilterCase(
        "type filter does not look at attributes",
        [image("attr_only", {"3D": True}), image("type_only", {}, {"3D": True})],
        {},
        {"3D": True},
        _urls("type_only"),
    ),
]
