"""Image-list rules for one task output (reference §5.3 steps 4–8)."""

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fractal_grpc.images.changes import (
    ImageChanges,
    ImageRecord,
    ImageRuleError,
    plan_image_changes,
    update_dataset_filters,
)
from fractal_grpc.images.filters import Filters, filter_images
from fractal_grpc.images.task_output import parse_task_output

ZARR_DIR = "/data/zarr"


def _record(
    name: str,
    attributes: dict[str, Any] | None = None,
    types: dict[str, bool] | None = None,
    origin: str | None = None,
) -> ImageRecord:
    return ImageRecord(
        zarr_url=f"{ZARR_DIR}/{name}",
        origin=origin,
        attributes=dict(attributes or {}),
        types=dict(types or {}),
    )


def _plan(
    output: dict[str, Any] | None,
    existing: Sequence[ImageRecord] = (),
    task_output_types: Mapping[str, bool] | None = None,
    filtered_input_urls: Sequence[str] | None = None,
    zarr_dir: str = ZARR_DIR,
) -> ImageChanges:
    return plan_image_changes(
        zarr_dir=zarr_dir,
        output=parse_task_output(output),
        existing={image.zarr_url: image for image in existing},
        task_output_types=task_output_types or {},
        filtered_input_urls=filtered_input_urls,
    )


def _apply(images: list[ImageRecord], changes: ImageChanges) -> list[ImageRecord]:
    """What a caller does with the changes: edit in place, append, remove."""
    by_url = {image.zarr_url: image for image in changes.updated}
    result = [by_url.get(image.zarr_url, image) for image in images]
    result.extend(changes.created)
    removed = set(changes.removed)
    return [image for image in result if image.zarr_url not in removed]


# --- Reference "dummy examples", at the rule level ---


def test_insert_single_image_in_empty_dataset() -> None:
    changes = _plan(
        {"image_list_updates": [{"zarr_url": f"{ZARR_DIR}/my-image/", "attributes": {"a": 1}}]}
    )
    assert changes == ImageChanges(
        created=[ImageRecord(f"{ZARR_DIR}/my-image", None, {"a": 1}, {})]
    )


def test_insert_single_image_that_already_exists_edits_it() -> None:
    old = _record("my-image", {"a": 1, "b": "x"}, {"t": True})
    changes = _plan(
        {"image_list_updates": [{"zarr_url": old.zarr_url, "attributes": {"a": 2}}]},
        existing=[old],
    )
    assert changes == ImageChanges(
        updated=[ImageRecord(old.zarr_url, None, {"a": 2, "b": "x"}, {"t": True})]
    )
    # The input record is left untouched.
    assert old.attributes == {"a": 1, "b": "x"}


def test_insert_image_with_none_attribute_drops_it() -> None:
    changes = _plan(
        {
            "image_list_updates": [
                {"zarr_url": f"{ZARR_DIR}/img", "attributes": {"attribute-name": None, "k": 1}}
            ]
        }
    )
    assert changes.created[0].attributes == {"k": 1}


def test_edit_existing_image_with_different_origin_is_refused() -> None:
    old = _record("my-image")
    with pytest.raises(ImageRuleError) as exc_info:
        _plan(
            {"image_list_updates": [{"zarr_url": old.zarr_url, "origin": "/somewhere"}]},
            existing=[old],
        )
    message = str(exc_info.value)
    assert "Cannot edit an image with zarr_url different from origin." in message
    assert old.zarr_url in message and "/somewhere" in message


def test_edit_existing_image_with_itself_as_origin_is_allowed() -> None:
    old = _record("my-image", origin="/elsewhere/raw")
    changes = _plan(
        {"image_list_updates": [{"zarr_url": old.zarr_url, "origin": old.zarr_url}]},
        existing=[old],
    )
    # The stored origin is kept.
    assert changes.updated == [ImageRecord(old.zarr_url, "/elsewhere/raw", {}, {})]


@pytest.mark.parametrize(
    ("zarr_dir", "zarr_url"),
    [
        (ZARR_DIR, "/somewhere/else/img"),
        (ZARR_DIR, "/data/zarr2/img"),  # a string prefix but not a parent directory
        (ZARR_DIR, "/data"),
        (f"{ZARR_DIR}/", "/data/zarr-other"),
    ],
)
def test_new_image_outside_zarr_dir_is_refused(zarr_dir: str, zarr_url: str) -> None:
    with pytest.raises(ImageRuleError) as exc_info:
        _plan({"image_list_updates": [{"zarr_url": zarr_url}]}, zarr_dir=zarr_dir)
    message = str(exc_info.value)
    assert "is not a parent directory" in message
    assert zarr_dir in message and zarr_url in message


@pytest.mark.parametrize("zarr_dir", [ZARR_DIR, f"{ZARR_DIR}/", "/"])
def test_new_image_equal_to_zarr_dir_is_refused(zarr_dir: str) -> None:
    url = zarr_dir.rstrip("/") or "/"
    with pytest.raises(
        ImageRuleError, match="Cannot create image if zarr_url is equal to zarr_dir"
    ):
        _plan({"image_list_updates": [{"zarr_url": url + "/"}]}, zarr_dir=zarr_dir)


@pytest.mark.parametrize(
    ("zarr_dir", "zarr_url"),
    [
        (ZARR_DIR, f"{ZARR_DIR}/a"),
        (f"{ZARR_DIR}/", f"{ZARR_DIR}/a/b/c"),
        ("/", "/a"),
    ],
)
def test_new_image_under_zarr_dir_is_accepted(zarr_dir: str, zarr_url: str) -> None:
    changes = _plan({"image_list_updates": [{"zarr_url": zarr_url}]}, zarr_dir=zarr_dir)
    assert [image.zarr_url for image in changes.created] == [zarr_url]


def test_existing_image_outside_zarr_dir_can_be_edited() -> None:
    old = ImageRecord("/elsewhere/img", None, {}, {})
    changes = _plan({"image_list_updates": [{"zarr_url": old.zarr_url}]}, existing=[old])
    assert changes.updated == [old]


def test_remove_images() -> None:
    images = [_record(str(index)) for index in range(3)]
    changes = _plan(
        {"image_list_removals": [image.zarr_url for image in images[:2]]}, existing=images
    )
    assert changes == ImageChanges(removed=[images[0].zarr_url, images[1].zarr_url])
    assert _apply(images, changes) == [images[2]]


def test_remove_missing_image_is_refused() -> None:
    with pytest.raises(
        ImageRuleError, match=r"Cannot remove missing image \(zarr_url=/data/zarr/x\)"
    ):
        _plan({"image_list_removals": [f"{ZARR_DIR}/x"]})


def test_unset_attribute() -> None:
    old = _record("my-image", {"key1": "value1", "key2": "value2"})
    changes = _plan(
        {"image_list_updates": [{"zarr_url": old.zarr_url, "attributes": {"key2": None}}]},
        existing=[old],
    )
    assert changes.updated[0].attributes == {"key1": "value1"}


def test_unset_missing_attribute_changes_nothing() -> None:
    old = _record("my-image", {"key1": "value1", "key2": "value2"})
    changes = _plan(
        {"image_list_updates": [{"zarr_url": old.zarr_url, "attributes": {"missing": None}}]},
        existing=[old],
    )
    assert changes.updated[0].attributes == {"key1": "value1", "key2": "value2"}


@pytest.mark.parametrize("output", [None, {}, {"filters": {"types": {"x": True}}}])
def test_implicit_update_on_empty_output(output: dict[str, Any] | None) -> None:
    images = [_record("a", {"k": 1}, {"t": False}), _record("b"), _record("not-filtered")]
    changes = _plan(
        output,
        existing=images,
        task_output_types={"t": True, "done": True},
        filtered_input_urls=[images[0].zarr_url, images[1].zarr_url],
    )
    assert changes == ImageChanges(
        updated=[
            ImageRecord(images[0].zarr_url, None, {"k": 1}, {"t": True, "done": True}),
            ImageRecord(images[1].zarr_url, None, {}, {"t": True, "done": True}),
        ]
    )


def test_implicit_update_with_no_filtered_images() -> None:
    assert _plan({}, filtered_input_urls=[]) == ImageChanges()


def test_implicit_update_requires_filtered_input_urls() -> None:
    with pytest.raises(ValueError, match="filtered_input_urls"):
        _plan({})


def test_implicit_update_requires_existing_images() -> None:
    with pytest.raises(ValueError, match="filtered input images"):
        _plan({}, filtered_input_urls=[f"{ZARR_DIR}/unknown"])


def test_filtered_input_urls_are_ignored_when_the_output_has_changes() -> None:
    images = [_record("a"), _record("b")]
    changes = _plan(
        {"image_list_removals": [images[0].zarr_url]},
        existing=images,
        task_output_types={"t": True},
        filtered_input_urls=[image.zarr_url for image in images],
    )
    assert changes == ImageChanges(removed=[images[0].zarr_url])


@pytest.mark.parametrize(
    "output",
    [
        {"image_list_updates": [{"zarr_url": f"{ZARR_DIR}/a"}, {"zarr_url": f"{ZARR_DIR}/a/"}]},
        {
            "image_list_updates": [{"zarr_url": f"{ZARR_DIR}/a"}],
            "image_list_removals": [f"{ZARR_DIR}/a"],
        },
        {"image_list_removals": [f"{ZARR_DIR}/a", f"{ZARR_DIR}/a"]},
    ],
)
def test_repeated_zarr_urls_are_refused(output: dict[str, Any]) -> None:
    with pytest.raises(ImageRuleError) as exc_info:
        _plan(output, existing=[_record("a")])
    assert f"{ZARR_DIR}/a" in str(exc_info.value)


def test_types_precedence_old_then_output_then_manifest() -> None:
    old = _record("a", {}, {"x": True, "y": True, "z": True})
    changes = _plan(
        {"image_list_updates": [{"zarr_url": old.zarr_url, "types": {"y": False, "z": False}}]},
        existing=[old],
        task_output_types={"z": True, "w": False},
    )
    assert changes.updated[0].types == {"x": True, "y": False, "z": True, "w": False}


def test_new_image_inherits_from_origin() -> None:
    raw = _record("raw.zarr/A/01/0", {"plate": "raw.zarr", "well": "A01", "drop": 1}, {"3D": True})
    changes = _plan(
        {
            "image_list_updates": [
                {
                    "zarr_url": f"{ZARR_DIR}/new.zarr/A/01/0",
                    "origin": raw.zarr_url,
                    "attributes": {"plate": "new.zarr", "drop": None},
                    "types": {"extra": True},
                }
            ]
        },
        existing=[raw],
        task_output_types={"3D": False},
    )
    assert changes.created == [
        ImageRecord(
            f"{ZARR_DIR}/new.zarr/A/01/0",
            raw.zarr_url,
            {"plate": "new.zarr", "well": "A01"},
            {"3D": False, "extra": True},
        )
    ]
    assert raw.attributes == {"plate": "raw.zarr", "well": "A01", "drop": 1}


def test_new_image_with_unknown_origin_starts_empty() -> None:
    changes = _plan(
        {
            "image_list_updates": [
                {"zarr_url": f"{ZARR_DIR}/new", "origin": "/not/in/dataset", "attributes": {"a": 1}}
            ]
        }
    )
    assert changes.created == [ImageRecord(f"{ZARR_DIR}/new", "/not/in/dataset", {"a": 1}, {})]


def test_origin_sees_changes_made_earlier_in_the_same_output() -> None:
    raw = _record("raw", {"a": 1}, {"t": True})
    changes = _plan(
        {
            "image_list_updates": [
                {"zarr_url": raw.zarr_url, "attributes": {"b": 2}},
                {"zarr_url": f"{ZARR_DIR}/first", "origin": raw.zarr_url, "attributes": {"c": 3}},
                {"zarr_url": f"{ZARR_DIR}/second", "origin": f"{ZARR_DIR}/first"},
            ],
        },
        existing=[raw],
        task_output_types={"done": True},
    )
    assert changes.updated == [
        ImageRecord(raw.zarr_url, None, {"a": 1, "b": 2}, {"t": True, "done": True})
    ]
    assert changes.created == [
        ImageRecord(
            f"{ZARR_DIR}/first", raw.zarr_url, {"a": 1, "b": 2, "c": 3}, {"t": True, "done": True}
        ),
        ImageRecord(
            f"{ZARR_DIR}/second",
            f"{ZARR_DIR}/first",
            {"a": 1, "b": 2, "c": 3},
            {"t": True, "done": True},
        ),
    ]


def test_origin_that_is_removed_in_the_same_output_still_provides_attributes() -> None:
    raw = _record("raw", {"a": 1})
    changes = _plan(
        {
            "image_list_updates": [{"zarr_url": f"{ZARR_DIR}/new", "origin": raw.zarr_url}],
            "image_list_removals": [raw.zarr_url],
        },
        existing=[raw],
    )
    assert changes.created == [ImageRecord(f"{ZARR_DIR}/new", raw.zarr_url, {"a": 1}, {})]
    assert changes.removed == [raw.zarr_url]


def test_changes_keep_output_order() -> None:
    existing = [_record("e1"), _record("e2")]
    changes = _plan(
        {
            "image_list_updates": [
                {"zarr_url": f"{ZARR_DIR}/n2"},
                {"zarr_url": f"{ZARR_DIR}/e2"},
                {"zarr_url": f"{ZARR_DIR}/n1"},
                {"zarr_url": f"{ZARR_DIR}/e1"},
            ]
        },
        existing=existing,
    )
    assert [image.zarr_url for image in changes.updated] == [f"{ZARR_DIR}/e2", f"{ZARR_DIR}/e1"]
    assert [image.zarr_url for image in changes.created] == [f"{ZARR_DIR}/n2", f"{ZARR_DIR}/n1"]


def test_image_record_dict_round_trip() -> None:
    data = {"zarr_url": "/z/a", "origin": None, "attributes": {"a": 1}, "types": {"t": True}}
    record = ImageRecord.from_dict(data)
    assert record.to_dict() == data
    assert record.to_dict()["attributes"] is not record.attributes
    assert ImageRecord.from_dict({"zarr_url": "/z/b"}) == ImageRecord("/z/b", None, {}, {})


# --- Dataset filters ---


def test_update_dataset_filters() -> None:
    current = Filters(attributes={"plate": "p", "well": "A01"}, types={"3D": True, "x": True})
    result = update_dataset_filters(
        current,
        Filters(attributes={"well": "B02", "n": None}, types={"y": True}),
        {"3D": False},
    )
    assert result == Filters(
        attributes={"plate": "p", "well": "B02", "n": None},
        types={"3D": False, "x": True, "y": True},
    )
    assert current == Filters(
        attributes={"plate": "p", "well": "A01"}, types={"3D": True, "x": True}
    )
    assert update_dataset_filters(Filters(), Filters(), {}) == Filters()


def test_update_dataset_filters_refuses_types_set_twice() -> None:
    with pytest.raises(ImageRuleError) as exc_info:
        update_dataset_filters(
            Filters(), Filters(types={"something": True, "b": True}), {"something": True}
        )
    assert "Some type filters are being set twice" in str(exc_info.value)
    assert "something" in str(exc_info.value)


# --- Golden scenario: test_fractal_demos_01 (create → illumination correction → MIP) ---


def _run_task(
    images: list[ImageRecord],
    filters: Filters,
    output: dict[str, Any] | None,
    task_output_types: dict[str, bool],
    input_filters: Filters | None = None,
) -> tuple[list[ImageRecord], Filters]:
    """One runner step, over an in-memory image list."""
    pre = Filters(
        attributes={**filters.attributes, **(input_filters or Filters()).attributes},
        types={**filters.types, **(input_filters or Filters()).types},
    )
    filtered = filter_images([image.to_dict() for image in images], pre.attributes, pre.types)
    task_output = parse_task_output(output)
    changes = plan_image_changes(
        zarr_dir=ZARR_DIR,
        output=task_output,
        existing={image.zarr_url: image for image in images},
        task_output_types=task_output_types,
        filtered_input_urls=[image["zarr_url"] for image in filtered],
    )
    new_filters = update_dataset_filters(
        filters, task_output.filters.to_filters(), task_output_types
    )
    return _apply(images, changes), new_filters


def test_golden_create_illumination_mip() -> None:
    plate = f"{ZARR_DIR}/my_plate.zarr"
    mip = f"{ZARR_DIR}/my_plate_mip.zarr"
    images: list[ImageRecord] = []
    filters = Filters()

    # 1. create_ome_zarr_compound (output_types {}): two 3D images, filters unchanged.
    images, filters = _run_task(
        images,
        filters,
        {
            "image_list_updates": [
                {
                    "zarr_url": f"{plate}/A/0{i}/0",
                    "attributes": {"well": f"A0{i}", "plate": "my_plate.zarr"},
                    "types": {"3D": True},
                }
                for i in (1, 2)
            ]
        },
        {},
    )
    assert images == [
        ImageRecord(
            f"{plate}/A/0{i}/0", None, {"well": f"A0{i}", "plate": "my_plate.zarr"}, {"3D": True}
        )
        for i in (1, 2)
    ]
    assert filters == Filters()

    # 2. illumination_correction (parallel, overwrite_input): no output → implicit update.
    images, filters = _run_task(images, filters, None, {"illumination_correction": True})
    assert [image.types for image in images] == [{"3D": True, "illumination_correction": True}] * 2
    assert filters == Filters(types={"illumination_correction": True})

    # 3. MIP_compound (output_types {"3D": False}): new images inherit from their origin.
    images, filters = _run_task(
        images,
        filters,
        {
            "image_list_updates": [
                {
                    "zarr_url": f"{mip}/A/0{i}/0",
                    "origin": f"{plate}/A/0{i}/0",
                    "attributes": {"plate": "my_plate_mip.zarr"},
                }
                for i in (1, 2)
            ]
        },
        {"3D": False},
        input_filters=Filters(types={"3D": True}),
    )
    assert images[2:] == [
        ImageRecord(
            f"{mip}/A/0{i}/0",
            f"{plate}/A/0{i}/0",
            {"well": f"A0{i}", "plate": "my_plate_mip.zarr"},
            {"3D": False, "illumination_correction": True},
        )
        for i in (1, 2)
    ]
    assert images[:2] == [
        ImageRecord(
            f"{plate}/A/0{i}/0",
            None,
            {"well": f"A0{i}", "plate": "my_plate.zarr"},
            {"3D": True, "illumination_correction": True},
        )
        for i in (1, 2)
    ]
    assert filters == Filters(types={"illumination_correction": True, "3D": False})

    # The accumulated dataset filters now select only the MIP images.
    selected = filter_images(
        [image.to_dict() for image in images], filters.attributes, filters.types
    )
    assert [image["zarr_url"] for image in selected] == [f"{mip}/A/01/0", f"{mip}/A/02/0"]
