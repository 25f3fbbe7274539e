"""The reference's rules for updates and deletes of projects, datasets and images (reference
§2.4, §3.2), as pure functions: the servicers ask, the store acts.

- *Update masks* (AIP-134): a mask names at least one field; each field once.
- *Project name*: unique per user (the database decides, see ``store/conflicts.py``); the
  project's own current name is no change (the reference refuses it with 422: a departure).
  Workflow renames follow the same rule (``rename_needed``).
- *zarr_dir immutability*: a dataset's zarr_dir may change only while it has no images (its
  images live under it). Re-sending the current value changes nothing and is accepted (the
  reference refuses any zarr_dir in the body of a dataset with images: a departure).
- *Delete refusals*: a project with a submitted job, a dataset used by a submitted job cannot
  be deleted (the reference's 422; FAILED_PRECONDITION here: wait for the job, or stop it).
- *Cascade*: deleting a project deletes its datasets (with their images) and workflows (with
  their workflow tasks); deleting a dataset deletes its images. Jobs are never deleted: their
  links to what was deleted are cleared, their dumps keep what they ran on.
- *Image update*: attributes and types named in the mask are replaced wholesale, not merged;
  zarr_url and origin never change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fractal_grpc.grpckit.errors import FailedPrecondition, InvalidArgument, NotFound


def mask_paths(paths: Sequence[str], field: str = "update_mask") -> list[str]:
    """The fields an update names (the proto's rule already limits which); an empty mask or a
    field named twice is INVALID_ARGUMENT."""
    if not paths:
        raise InvalidArgument(
            f"{field}: must name at least one field",
            violations=[(field, "must name at least one field")],
        )
    if len(set(paths)) != len(paths):
        raise InvalidArgument(
            f"{field}: a field is named twice", violations=[(field, "a field is named twice")]
        )
    return list(paths)


def rename_needed(current: str, new: str) -> bool:
    """Whether renaming a project or a workflow to ``new`` changes anything (its own current
    name does not, where the reference answers 422)."""
    return current != new


def zarr_dir_refusal(current: str, new: str, image_count: int) -> FailedPrecondition | None:
    """The error for changing a dataset's zarr_dir, or None if the change is allowed."""
    if new == current or image_count == 0:
        return None
    return FailedPrecondition(
        f"Cannot modify `zarr_dir` of a dataset with {image_count} image(s)",
        reason="DATASET_HAS_IMAGES",
        metadata={"field": "dataset.zarr_dir", "image_count": str(image_count)},
    )


@dataclass(frozen=True)
class Refusal:
    """Why an object cannot be deleted now."""

    label: str  # "Project" or "Dataset"
    reason: str


DELETE_REFUSALS = {
    "project": Refusal("Project", "PROJECT_IN_USE"),
    "dataset": Refusal("Dataset", "DATASET_IN_USE"),
}


def delete_refusal(kind: str, submitted_job_ids: Iterable[int]) -> FailedPrecondition | None:
    """The error for deleting a ``kind`` ("project" or "dataset") that submitted jobs use, or
    None if it may be deleted."""
    jobs = sorted(submitted_job_ids)
    if not jobs:
        return None
    refusal = DELETE_REFUSALS[kind]
    listed = ", ".join(str(j) for j in jobs[:10]) + (", …" if len(jobs) > 10 else "")
    return FailedPrecondition(
        f"{refusal.label} is linked to submitted job(s) {listed}: wait for them or stop them",
        reason=refusal.reason,
        metadata={"job_ids": ",".join(str(j) for j in jobs[:100])},
    )


@dataclass(frozen=True)
class Cascade:
    """What deleting an object does: the children deleted with it, the job links cleared."""

    deleted: tuple[str, ...]
    job_links_cleared: tuple[str, ...]


CASCADES = {
    "project": Cascade(
        deleted=("datasets", "images", "workflows", "workflow_tasks", "memberships"),
        job_links_cleared=("project_id", "workflow_id", "dataset_id"),
    ),
    "dataset": Cascade(deleted=("images",), job_links_cleared=("dataset_id",)),
}


def replaced_image(
    attributes: Mapping[str, Any],
    types: Mapping[str, bool],
    paths: Iterable[str],
    new_attributes: Mapping[str, Any],
    new_types: Mapping[str, bool],
) -> tuple[dict[str, Any], dict[str, bool]]:
    """An image's attributes and types after an update naming ``paths``: each named one is
    replaced wholesale by the new value, the others kept."""
    chosen = set(paths)
    return (
        dict(new_attributes) if "attributes" in chosen else dict(attributes),
        dict(new_types) if "types" in chosen else dict(types),
    )


def checked_deletions(urls: Sequence[str], present: Iterable[str]) -> list[str]:
    """The zarr_urls to remove: each must be in the dataset (NOT_FOUND naming the missing ones)
    and named once (INVALID_ARGUMENT)."""
    seen: set[str] = set()
    twice = []
    for i, url in enumerate(urls):
        if url in seen:
            twice.append((f"zarr_urls[{i}]", "appears twice in this request"))
        seen.add(url)
    if twice:
        raise InvalidArgument("zarr_urls: a zarr_url appears twice", violations=twice[:100])
    known = set(present)
    missing = [u for u in urls if u not in known]
    if missing:
        raise NotFound(
            f"{len(missing)} image(s) not in the dataset, e.g. {missing[0]}",
            reason="IMAGE_NOT_FOUND",
            metadata={"zarr_url": missing[0]},
        )
    return list(urls)
