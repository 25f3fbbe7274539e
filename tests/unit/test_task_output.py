"""Task outputs: schema, parsing, deduplication, merging, uniqueness (reference §5.4)."""

from typing import Any

import pytest

from fractal_grpc.images.filters import Filters
from fractal_grpc.images.task_output import (
    MAX_PARALLELIZATION_LIST_SIZE,
    FiltersModel,
    InitArgsModel,
    InitTaskOutput,
    SingleImageTaskOutput,
    TaskOutput,
    TaskOutputValidationError,
    check_unique_urls,
    deduplicate,
    merge_outputs,
    parse_init_task_output,
    parse_task_output,
)


def test_constant() -> None:
    assert MAX_PARALLELIZATION_LIST_SIZE == 20_000


@pytest.mark.parametrize("data", [None, {}])
def test_parse_task_output_empty(data: dict[str, Any] | None) -> None:
    output = parse_task_output(data)
    assert output == TaskOutput()
    assert output.model_dump() == {
        "image_list_updates": [],
        "image_list_removals": [],
        "filters": {"attributes": {}, "types": {}},
    }


def test_parse_task_output_full() -> None:
    output = parse_task_output(
        {
            "image_list_updates": [
                {
                    "zarr_url": "/zarr/plate.zarr/A/01/0/",
                    "origin": "/zarr//raw.zarr/A/01/0",
                    "attributes": {" well ": "A01", "n": 1, "x": 1.5, "ok": True, "gone": None},
                    "types": {"3D": False},
                },
                {"zarr_url": "/zarr/other"},
            ],
            "image_list_removals": ["/zarr/old/", "/zarr/a/../b"],
            "filters": {"attributes": {"well": "A01", "n": None}, "types": {"3D": False}},
        }
    )
    first, second = output.image_list_updates
    assert first.zarr_url == "/zarr/plate.zarr/A/01/0"
    assert first.origin == "/zarr/raw.zarr/A/01/0"
    assert first.attributes == {"well": "A01", "n": 1, "x": 1.5, "ok": True, "gone": None}
    assert first.types == {"3D": False}
    assert second == SingleImageTaskOutput(zarr_url="/zarr/other")
    assert second.origin is None and second.attributes == {} and second.types == {}
    assert output.image_list_removals == ["/zarr/old", "/zarr/b"]
    assert output.filters.to_filters() == Filters(
        attributes={"well": "A01", "n": None}, types={"3D": False}
    )


def test_attribute_scalars_keep_their_json_type() -> None:
    item = SingleImageTaskOutput.model_validate(
        {"zarr_url": "/z/a", "attributes": {"b": True, "i": 1, "f": 1.0, "s": "1", "z": False}}
    )
    kinds = {key: type(value) for key, value in item.attributes.items()}
    assert kinds == {"b": bool, "i": int, "f": float, "s": str, "z": bool}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"unknown": 1}, "unknown"),
        ({"image_list_updates": [{"zarr_url": "relative/x"}]}, "URLs must begin with '/' or 's3'"),
        ({"image_list_updates": [{"zarr_url": "s3://b/x"}]}, "S3 handling not implemented yet"),
        ({"image_list_updates": [{"zarr_url": "/a", "origin": "rel"}]}, "origin"),
        ({"image_list_updates": [{"zarr_url": "/a", "extra": 1}]}, "extra"),
        ({"image_list_updates": [{}]}, "zarr_url"),
        ({"image_list_updates": [{"zarr_url": "/a", "attributes": {"k": [1]}}]}, "attributes.k"),
        ({"image_list_updates": [{"zarr_url": "/a", "attributes": {"k": {}}}]}, "attributes.k"),
        ({"image_list_updates": [{"zarr_url": "/a", "attributes": {"": 1}}]}, "is empty"),
        ({"image_list_updates": [{"zarr_url": "/a", "types": {"t": None}}]}, "types.t"),
        ({"image_list_updates": [{"zarr_url": "/a", "types": {"t": 1, " t": 0}}]}, "not unique"),
        ({"image_list_removals": ["relative"]}, "image_list_removals"),
        ({"image_list_removals": "/a"}, "image_list_removals"),
        ({"filters": {"attributes": {"a": [1]}}}, "filters.attributes"),
        # What JSON (PostgreSQL, google.protobuf.Value) cannot hold.
        (
            {"image_list_updates": [{"zarr_url": "/a", "attributes": {"k": float("nan")}}]},
            "attributes['k']: nan is not a finite number",
        ),
        ({"filters": {"attributes": {"a": float("-inf")}}}, "not a finite number"),
        (
            {"image_list_updates": [{"zarr_url": "/a", "attributes": {"k": 10**400}}]},
            "beyond a double's range",
        ),
        ({"filters": {"types": {" ": True}}}, "filters.types: key ' ' is empty"),
        ({"filters": {"other": {}}}, "filters.other"),
    ],
)
def test_parse_task_output_refuses(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TaskOutputValidationError) as exc_info:
        parse_task_output(data)
    message = str(exc_info.value)
    assert message.startswith("Validation of task output failed")
    assert fragment in message
    assert "Traceback" not in message
    assert isinstance(exc_info.value, ValueError)
    assert exc_info.value.__cause__ is None


def test_parse_task_output_refuses_non_object() -> None:
    with pytest.raises(TaskOutputValidationError, match="^Validation of task output failed"):
        parse_task_output([1, 2])  # type: ignore[arg-type]


def test_parse_task_output_error_shows_truncated_data() -> None:
    data = {"image_list_removals": ["/x" * 10_000, "bad"]}
    with pytest.raises(TaskOutputValidationError) as exc_info:
        parse_task_output(data)
    assert len(str(exc_info.value)) < 5_000


def test_parse_init_task_output() -> None:
    assert parse_init_task_output(None) == InitTaskOutput()
    assert parse_init_task_output({}) == InitTaskOutput(parallelization_list=[])
    output = parse_init_task_output(
        {
            "parallelization_list": [
                {"zarr_url": "/z/a/", "init_args": {"channel": {"label": "DAPI"}, "n": [1, 2]}},
                {"zarr_url": "/z/b"},
            ]
        }
    )
    assert output.parallelization_list == [
        InitArgsModel(zarr_url="/z/a", init_args={"channel": {"label": "DAPI"}, "n": [1, 2]}),
        InitArgsModel(zarr_url="/z/b", init_args={}),
    ]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"parallelization_list": [{"zarr_url": "x"}]}, "URLs must begin"),
        ({"parallelization_list": [{"zarr_url": "/x", "other": 1}]}, "other"),
        ({"parallelization_list": [{"init_args": {}}]}, "zarr_url"),
        ({"parallelization_list": [{"zarr_url": "/x", "init_args": [1]}]}, "init_args"),
        ({"image_list_updates": []}, "image_list_updates"),
    ],
)
def test_parse_init_task_output_refuses(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TaskOutputValidationError) as exc_info:
        parse_init_task_output(data)
    assert str(exc_info.value).startswith("Validation of task output failed")
    assert fragment in str(exc_info.value)


def _image(url: str, **attributes: Any) -> SingleImageTaskOutput:
    return SingleImageTaskOutput(zarr_url=url, attributes=attributes)


def test_deduplicate_keeps_first_occurrences_in_order() -> None:
    a, b, c = _image("/z/a"), _image("/z/b", x=1), _image("/z/c")
    items = [a, b, _image("/z/a"), c, _image("/z/b", x=1), a]
    assert deduplicate(items) == [a, b, c]
    assert deduplicate(items)[0] is a
    assert deduplicate([]) == []


@pytest.mark.parametrize(
    ("first", "second", "duplicates"),
    [
        ({"x": 1}, {"x": 1}, True),
        ({"x": 1}, {"x": 1.0}, True),
        ({"x": 1}, {"x": True}, False),
        ({"x": 0}, {"x": False}, False),
        ({"x": "1"}, {"x": 1}, False),
        ({"x": None}, {"x": None}, True),
        ({"x": None}, {}, False),
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}, True),
    ],
)
def test_deduplicate_equality(
    first: dict[str, Any], second: dict[str, Any], duplicates: bool
) -> None:
    items = [_image("/z/a", **first), _image("/z/a", **second)]
    assert len(deduplicate(items)) == (1 if duplicates else 2)


def test_deduplicate_init_args_with_nested_values() -> None:
    items = [
        InitArgsModel(zarr_url="/z/a", init_args={"c": {"l": [1, {"k": True}]}}),
        InitArgsModel(zarr_url="/z/a", init_args={"c": {"l": [1, {"k": True}]}}),
        InitArgsModel(zarr_url="/z/a", init_args={"c": {"l": [1, {"k": 1}]}}),
        InitArgsModel(zarr_url="/z/a", init_args={"c": {"l": [{"k": True}, 1]}}),
        InitArgsModel(zarr_url="/z/b", init_args={"c": {"l": [1, {"k": True}]}}),
    ]
    assert deduplicate(items) == [items[0], items[2], items[3], items[4]]


def test_deduplicate_many_items_is_fast() -> None:
    items = [_image(f"/z/{i % 10_000}", n=i % 10_000) for i in range(MAX_PARALLELIZATION_LIST_SIZE)]
    assert len(deduplicate(items)) == 10_000


def test_merge_outputs_empty() -> None:
    assert merge_outputs([]) == TaskOutput()


def test_merge_outputs_concatenates_and_deduplicates() -> None:
    filters = FiltersModel(attributes={"a": 1}, types={"t": True})
    outputs = [
        TaskOutput(
            image_list_updates=[_image("/z/a", x=1), _image("/z/shared")],
            image_list_removals=["/z/r1"],
            filters=filters,
        ),
        TaskOutput(),  # a call that wrote nothing would have different (empty) filters
    ]
    with pytest.raises(ValueError):
        merge_outputs(outputs)

    outputs[1] = TaskOutput(
        image_list_updates=[_image("/z/shared"), _image("/z/b")],
        image_list_removals=["/z/r2", "/z/r1"],
        filters=FiltersModel(attributes={"a": 1.0}, types={"t": True}),
    )
    merged = merge_outputs(outputs)
    assert [item.zarr_url for item in merged.image_list_updates] == ["/z/a", "/z/shared", "/z/b"]
    # Removals are concatenated as they are (duplicates surface in check_unique_urls).
    assert merged.image_list_removals == ["/z/r1", "/z/r2", "/z/r1"]
    assert merged.filters == filters


@pytest.mark.parametrize(
    "other",
    [
        FiltersModel(),
        FiltersModel(attributes={"a": True}, types={"t": True}),
        FiltersModel(attributes={"a": 1}, types={"t": False}),
        FiltersModel(attributes={"a": 1, "b": None}, types={"t": True}),
    ],
)
def test_merge_outputs_refuses_different_filters(other: FiltersModel) -> None:
    first = TaskOutput(filters=FiltersModel(attributes={"a": 1}, types={"t": True}))
    with pytest.raises(TaskOutputValidationError, match="different filters"):
        merge_outputs([first, TaskOutput(filters=other)])


def test_merge_outputs_of_empty_outputs() -> None:
    assert merge_outputs([TaskOutput(), TaskOutput()]) == TaskOutput()


def test_check_unique_urls() -> None:
    check_unique_urls(TaskOutput())
    check_unique_urls(
        TaskOutput(
            image_list_updates=[_image("/z/a"), _image("/z/b")], image_list_removals=["/z/c"]
        )
    )
    cases = [
        TaskOutput(image_list_updates=[_image("/z/a"), _image("/z/a", x=1)]),
        TaskOutput(image_list_updates=[_image("/z/a")], image_list_removals=["/z/a/"]),
        TaskOutput(image_list_removals=["/z/a", "/z/b", "/z/a", "/z/b", "/z/a"]),
    ]
    for output in cases:
        with pytest.raises(ValueError) as exc_info:
            check_unique_urls(output)
        assert "/z/a" in str(exc_info.value)
    assert str(exc_info.value).count("/z/a") == 1
    assert "/z/b" in str(exc_info.value)
