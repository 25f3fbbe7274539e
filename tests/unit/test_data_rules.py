"""The reference's update/delete rules for projects, datasets and images (pure functions)."""

from __future__ import annotations

import grpc
import pytest

from fractal_grpc.data import rules
from fractal_grpc.grpckit.errors import DomainError


@pytest.mark.parametrize(
    ("paths", "ok"),
    [
        ([], False),
        (["name"], True),
        (["name", "filters"], True),
        (["name", "name"], False),
    ],
)
def test_mask_paths(paths: list[str], ok: bool) -> None:
    if ok:
        assert rules.mask_paths(paths) == paths
    else:
        with pytest.raises(DomainError) as err:
            rules.mask_paths(paths)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("current", "new", "needed"),
    [("p", "p", False), ("p", "q", True), ("p", "P", True)],
)
def test_rename_needed(current: str, new: str, needed: bool) -> None:
    assert rules.rename_needed(current, new) is needed


@pytest.mark.parametrize(
    ("current", "new", "count", "refused"),
    [
        ("/zarr/a", "/zarr/b", 0, False),  # no images: free to move
        ("/zarr/a", "/zarr/a", 0, False),
        ("/zarr/a", "/zarr/a", 5, False),  # the current value: no change (reference: 422)
        ("/zarr/a", "/zarr/b", 1, True),  # images live under the old one
        ("/zarr/a", "/zarr/b", 100_000, True),
    ],
)
def test_zarr_dir_refusal(current: str, new: str, count: int, refused: bool) -> None:
    refusal = rules.zarr_dir_refusal(current, new, count)
    assert (refusal is not None) is refused
    if refusal:
        assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal.reason == "DATASET_HAS_IMAGES"


@pytest.mark.parametrize(
    ("kind", "jobs", "reason"),
    [
        ("project", [], None),
        ("project", [3], "PROJECT_IN_USE"),
        ("dataset", [], None),
        ("dataset", [7, 2], "DATASET_IN_USE"),
    ],
)
def test_delete_refusal(kind: str, jobs: list[int], reason: str | None) -> None:
    refusal = rules.delete_refusal(kind, jobs)
    if reason is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal.reason == reason
    assert refusal.metadata["job_ids"] == ",".join(str(j) for j in sorted(jobs))


def test_cascades_keep_jobs() -> None:
    assert rules.CASCADES["project"].job_links_cleared == (
        "project_id",
        "workflow_id",
        "dataset_id",
    )
    assert "jobs" not in rules.CASCADES["project"].deleted
    assert rules.CASCADES["dataset"].deleted == ("images",)


OLD_A, OLD_T = {"well": "A01", "n": 1}, {"3D": True}
NEW_A, NEW_T = {"well": "B02"}, {"2D": True}


@pytest.mark.parametrize(
    ("paths", "attributes", "types"),
    [
        (["attributes"], NEW_A, OLD_T),  # replaced wholesale: "n" is gone, not merged
        (["types"], OLD_A, NEW_T),
        (["attributes", "types"], NEW_A, NEW_T),
    ],
)
def test_replaced_image(paths: list[str], attributes: dict, types: dict) -> None:
    assert rules.replaced_image(OLD_A, OLD_T, paths, NEW_A, NEW_T) == (attributes, types)


@pytest.mark.parametrize(
    ("urls", "present", "code"),
    [
        (["/z/a"], ["/z/a"], None),
        (["/z/a", "/z/b"], ["/z/b", "/z/a", "/z/c"], None),
        (["/z/a", "/z/x"], ["/z/a"], grpc.StatusCode.NOT_FOUND),
        (["/z/a", "/z/a"], ["/z/a"], grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_checked_deletions(
    urls: list[str], present: list[str], code: grpc.StatusCode | None
) -> None:
    if code is None:
        assert rules.checked_deletions(urls, present) == urls
    else:
        with pytest.raises(DomainError) as err:
            rules.checked_deletions(urls, present)
        assert err.value.code == code
