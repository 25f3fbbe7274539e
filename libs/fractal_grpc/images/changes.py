"""The image-list rules of the reference for one task's output (§5.3 steps 4–8), as pure
functions shared by the runner and by the API's image-write transaction.

:func:`plan_image_changes` turns a validated :class:`TaskOutput` into the rows to update, insert
and delete; :func:`update_dataset_filters` computes the dataset filters after the task.

Rules, in order:

1. *Implicit update*: an output with neither updates nor removals counts as updating every
   filtered input image (with no attributes or types), so the task's ``output_types`` apply to
   all of its inputs.
2. *Uniqueness*: a zarr_url may appear only once across updates and removals.
3. *Updates*, in output order. For an image that already exists (edited in place): its origin
   must be None or its own zarr_url; attributes are the old ones updated with the output's, and
   keys set to None are then dropped; types are old ∪ output types ∪ the task's
   ``output_types``. For a new image: its zarr_url must lie *under* zarr_dir (a path-prefix
   check, stricter than the reference's plain string prefix: ``/data/zarr2/x`` is not under
   ``/data/zarr``); it starts from a copy of its origin's attributes and types when the origin
   is known (possibly an image created or edited earlier in the same output), else from
   nothing; then attributes (dropping None), output types and ``output_types`` are applied.
4. *Removals*: every removed zarr_url must exist.

Rule violations caused by the task raise :class:`ImageRuleError` with a user-facing message
(the reference raises ``JobExecutionError`` there; for repeated zarr_urls it raised a plain
ValueError, reported as an unknown error, which we also report as an ImageRuleError).
Caller mistakes raise ValueError.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fractal_grpc.images.filters import Filters, ImageDict
from fractal_grpc.images.task_output import TaskOutput, check_unique_urls

__all__ = [
    "ImageChanges",
    "ImageRecord",
    "ImageRuleError",
    "plan_image_changes",
    "update_dataset_filters",
]


class ImageRuleError(Exception):
    """A task output breaks an image-list rule; the message is meant for the user."""


@dataclass
class ImageRecord:
    """The full state of one image of a dataset."""

    zarr_url: str
    origin: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    types: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageRecord":
        """From ``{"zarr_url", "origin"?, "attributes"?, "types"?}``, copying the dicts."""
        return cls(
            zarr_url=data["zarr_url"],
            origin=data.get("origin"),
            attributes=dict(data.get("attributes") or {}),
            types=dict(data.get("types") or {}),
        )

    def to_dict(self) -> ImageDict:
        """A copy as a plain image dict."""
        return {
            "zarr_url": self.zarr_url,
            "origin": self.origin,
            "attributes": dict(self.attributes),
            "types": dict(self.types),
        }


@dataclass
class ImageChanges:
    """What one task output does to the image list."""

    updated: list[ImageRecord] = field(default_factory=list)
    """Full new state of existing images edited in place, in output order."""
    created: list[ImageRecord] = field(default_factory=list)
    """New images, in output order."""
    removed: list[str] = field(default_factory=list)
    """zarr_urls of removed images, in output order."""


def _without_none(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


def _is_under(zarr_url: str, zarr_dir: str) -> bool:
    prefix = zarr_dir.rstrip("/") + "/"
    return zarr_url.startswith(prefix) and zarr_url != prefix


def plan_image_changes(
    *,
    zarr_dir: str,
    output: TaskOutput,
    existing: Mapping[str, ImageRecord],
    task_output_types: Mapping[str, bool],
    filtered_input_urls: Sequence[str] | None = None,
) -> ImageChanges:
    """Apply the image-list rules to one task output.

    ``existing`` must hold the current state of every existing image the output touches: the
    updated and removed zarr_urls, the origins of new images, and, for an implicit update,
    every url of ``filtered_input_urls`` (the zarr_urls of the task's filtered input images,
    required when the output has neither updates nor removals). ``existing`` is not modified.
    """
    # (zarr_url, origin, attributes, types) for each update, in order.
    updates: list[tuple[str, str | None, Mapping[str, Any], Mapping[str, bool]]]
    if not output.image_list_updates and not output.image_list_removals:
        if filtered_input_urls is None:
            raise ValueError(
                "filtered_input_urls is required when the task output has no updates and no "
                "removals (implicit update of the input images)"
            )
        missing = [url for url in filtered_input_urls if url not in existing]
        if missing:
            raise ValueError(f"existing lacks the filtered input images {missing[:10]}")
        updates = [(url, None, {}, {}) for url in dict.fromkeys(filtered_input_urls)]
    else:
        try:
            check_unique_urls(output)
        except ValueError as exc:
            raise ImageRuleError(str(exc)) from None
        updates = [
            (item.zarr_url, item.origin, item.attributes, item.types)
            for item in output.image_list_updates
        ]

    changes = ImageChanges()
    # Images edited or created so far by this output: later origins see their new state.
    touched: dict[str, ImageRecord] = {}

    for zarr_url, origin, attributes, types in updates:
        current = existing.get(zarr_url)
        if current is not None:
            if origin is not None and origin != zarr_url:
                raise ImageRuleError(
                    "Cannot edit an image with zarr_url different from origin.\n"
                    f"zarr_url={zarr_url}\norigin={origin}"
                )
            record = ImageRecord(
                zarr_url=zarr_url,
                origin=current.origin,
                attributes=_without_none({**current.attributes, **attributes}),
                types={**current.types, **types, **task_output_types},
            )
            changes.updated.append(record)
        else:
            if zarr_url == zarr_dir.rstrip("/") or zarr_url == zarr_dir:
                raise ImageRuleError(
                    f"Cannot create image if zarr_url is equal to zarr_dir ({zarr_dir})."
                )
            if not _is_under(zarr_url, zarr_dir):
                raise ImageRuleError(
                    f"Cannot create image if zarr_dir ({zarr_dir}) is not a parent directory "
                    f"of zarr_url ({zarr_url})."
                )
            base_attributes: Mapping[str, Any] = {}
            base_types: Mapping[str, bool] = {}
            if origin is not None:
                source = touched.get(origin) or existing.get(origin)
                if source is not None:
                    base_attributes = source.attributes
                    base_types = source.types
            record = ImageRecord(
                zarr_url=zarr_url,
                origin=origin,
                attributes=_without_none({**base_attributes, **attributes}),
                types={**base_types, **types, **task_output_types},
            )
            changes.created.append(record)
        touched[zarr_url] = record

    for zarr_url in output.image_list_removals:
        if zarr_url not in existing:
            raise ImageRuleError(f"Cannot remove missing image (zarr_url={zarr_url}).")
        changes.removed.append(zarr_url)

    return changes


def update_dataset_filters(
    current: Filters,
    output_filters: Filters,
    task_output_types: Mapping[str, bool],
) -> Filters:
    """The dataset filters after a task: attribute filters updated with the output's; type
    filters updated with the task's ``output_types`` and the output's type filters, which must
    not share keys."""
    overlap = sorted(set(task_output_types) & set(output_filters.types))
    if overlap:
        raise ImageRuleError(
            "Some type filters are being set twice, by the task's output_types "
            f"({dict(task_output_types)}) and by the task output's filters "
            f"({output_filters.types}): {overlap}"
        )
    return Filters(
        attributes={**current.attributes, **output_filters.attributes},
        types={**current.types, **task_output_types, **output_filters.types},
    )
