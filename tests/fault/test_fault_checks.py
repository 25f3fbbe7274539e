"""The fault suite's figures come from pure functions: each is checked here on small,
hand-written invocation logs and image lists (no servers)."""

from __future__ import annotations

import pytest
from fault_checks import (
    Invocation,
    calls_by_key,
    completed_reruns,
    duplicate_history,
    expected_facets,
    facet_mismatches,
    image_defects,
    in_flight_reruns,
    job_counts,
    never_completed,
)

A = (1, "a", "/z/img0")
B = (1, "a", "/z/img1")
FAULT = 10.0


def log(*events: tuple[str, tuple[int, str, str], float]) -> dict:
    return calls_by_key(Invocation(event, key, 100, t) for event, key, t in events)


@pytest.mark.parametrize(
    ("events", "completed", "in_flight"),
    [
        # Completed before the fault, never started again; B in flight, run once more.
        (
            [("start", A, 1), ("done", A, 2), ("start", B, 3), ("start", B, 11), ("done", B, 12)],
            [],
            {B: 1},
        ),
        # A completed before the fault and ran again after it.
        ([("start", A, 1), ("done", A, 2), ("start", A, 11), ("done", A, 12)], [A], {}),
        # The in-flight process finished after the fault (an orphan), then the call re-ran:
        # that is the one allowed re-run, not a completed call re-run.
        ([("start", B, 3), ("done", B, 10.5), ("start", B, 11), ("done", B, 12)], [], {B: 1}),
        # Re-run twice after the fault.
        ([("start", B, 3), ("start", B, 11), ("start", B, 13), ("done", B, 14)], [], {B: 2}),
        # Started only after the fault: neither completed nor in flight at the fault.
        ([("start", A, 11), ("done", A, 12)], [], {}),
    ],
)
def test_reruns_are_counted_against_the_instant_of_the_fault(
    events: list, completed: list, in_flight: dict
) -> None:
    calls = log(*events)
    assert completed_reruns(calls, FAULT) == completed
    assert in_flight_reruns(calls, FAULT) == in_flight


def test_a_call_without_a_done_line_never_completed() -> None:
    calls = log(("start", A, 1), ("done", A, 2), ("start", B, 3))
    assert never_completed(calls, [A, B, (2, "b", "/z/img0")]) == [B, (2, "b", "/z/img0")]


def test_job_counts_take_anything_unfinished_as_stuck() -> None:
    counts = job_counts({1: "DONE", 2: "FAILED", 3: "SUBMITTED", 4: "DONE"})
    assert (counts["DONE"], counts["FAILED"], counts["stuck"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("history", "duplicates"),
    [([(1, "done"), (2, "done")], 0), ([(1, "done"), (1, "done"), (2, "done"), (1, "done")], 2)],
)
def test_duplicate_history(history: list, duplicates: int) -> None:
    assert duplicate_history(history) == duplicates


def image(url: str, **attributes: str) -> dict:
    return {
        "zarr_url": url,
        "attributes": attributes,
        "types": {f"{mark}_done": True for mark in attributes},
    }


@pytest.mark.parametrize(
    ("images", "defects"),
    [
        ([image("/z/img0", a="a:img0", b="b:img0")], []),
        (
            [image("/z/img0", a="a:img0")],
            ["/z/img0: attribute b=None", "/z/img0: type b_done missing"],
        ),
        (
            [image("/z/img0", a="a:img0", b="b:img0")] * 2,
            ["/z/img0 listed 2 times"],
        ),
        (
            [image("/z/img0", a="a:img0", b="b:img0"), image("/z/x", a="a:x", b="b:x")],
            ["/z/x unexpected"],
        ),
        ([], ["/z/img0 missing"]),
    ],
)
def test_image_defects(images: list, defects: list) -> None:
    assert image_defects(images, ["/z/img0"], ["a", "b"]) == defects


def test_facets_are_counted_from_the_list_and_compared_with_the_totals() -> None:
    images = [image("/z/img0", a="a:img0"), image("/z/img1", a="a:img1")]
    images[1]["types"]["3D"] = False
    attributes, types = expected_facets(images)
    assert attributes == {("a", "a:img0"): 1, ("a", "a:img1"): 1}
    assert types == {"a_done": 2}
    assert facet_mismatches(types, {"a_done": 2}, "type") == []
    assert facet_mismatches(types, {"a_done": 1, "3D": 1}, "type") == [
        "type 3D: 0 in the list, total_count 1",
        "type a_done: 2 in the list, total_count 1",
    ]
