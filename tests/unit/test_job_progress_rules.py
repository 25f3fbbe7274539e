"""Per-task progress of a job (fractal_grpc.jobs.progress), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_grpc.jobs.progress import (
    CallCounts,
    apply_report,
    end_of_job,
    initial_entries,
    mark_done,
)


def _entries(*states: str, counts: tuple[int, int, int] = (0, 0, 0)) -> list[dict[str, Any]]:
    done, failed, total = counts
    return [
        {
            "workflow_task_id": 10 + order,
            "order": order,
            "task_name": f"t{order}",
            "state": state,
            "calls_done": done,
            "calls_failed": failed,
            "calls_total": total,
        }
        for order, state in enumerate(states)
    ]


def _states(entries: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in entries]


def test_a_new_job_has_every_task_pending_without_calls() -> None:
    entries = initial_entries(
        [
            {"workflow_task_id": 10, "order": 0, "task_name": "t0"},
            {"workflow_task_id": 11, "order": 1, "task_name": "t1"},
        ]
    )
    assert entries == _entries("pending", "pending")


@pytest.mark.parametrize(
    ("before", "order", "after", "changed"),
    [
        (("pending", "pending"), 0, ("running", "pending"), True),
        (("done", "running"), 1, ("done", "running"), True),
        # late or repeated reports never reopen an ended task
        (("done", "pending"), 0, ("done", "pending"), False),
        (("failed", "pending"), 0, ("failed", "pending"), False),
        # an order outside the slice changes nothing
        (("pending",), 5, ("pending",), False),
    ],
)
def test_reports(
    before: tuple[str, ...], order: int, after: tuple[str, ...], changed: bool
) -> None:
    result, did = apply_report(_entries(*before), order, CallCounts(3, 1, 8))
    assert _states(result) == list(after)
    assert did is changed
    if changed:
        assert (result[order]["calls_done"], result[order]["calls_total"]) == (3, 8)


def test_the_same_report_twice_changes_nothing_the_second_time() -> None:
    once, _ = apply_report(_entries("pending"), 0, CallCounts(2, 0, 4))
    twice, changed = apply_report(once, 0, CallCounts(2, 0, 4))
    assert twice == once and changed is False


@pytest.mark.parametrize(
    ("stored", "reported", "kept"),
    [
        ((2, 0, 4), (3, 0, 4), (3, 0, 4)),
        # a resumed run's first report (before it listed its records) does not go backwards
        ((2, 0, 4), (0, 0, 0), (2, 0, 4)),
        # a compound task's total grows once its init call listed the items
        ((1, 0, 1), (1, 0, 5), (1, 0, 5)),
        ((1, 0, 5), (1, 1, 5), (1, 1, 5)),
    ],
)
def test_reported_counts_never_go_down(
    stored: tuple[int, int, int], reported: tuple[int, int, int], kept: tuple[int, int, int]
) -> None:
    result, changed = apply_report(_entries("running", counts=stored), 0, CallCounts(*reported))
    entry = result[0]
    assert (entry["calls_done"], entry["calls_failed"], entry["calls_total"]) == kept
    assert changed is (kept != stored)


def test_mark_done_with_and_without_final_counts() -> None:
    running, _ = apply_report(_entries("pending"), 0, CallCounts(3, 0, 4))
    assert mark_done(running, 0, CallCounts(4, 0, 4))[0] == {
        **running[0],
        "state": "done",
        "calls_done": 4,
    }
    kept = mark_done(running, 0, None)[0]
    assert (kept["state"], kept["calls_done"], kept["calls_total"]) == ("done", 3, 4)


@pytest.mark.parametrize(
    ("before", "status", "failed_order", "after"),
    [
        (("done", "done"), "done", None, ("done", "done")),
        (("done", "running", "pending"), "failed", 1, ("done", "failed", "pending")),
        # failed without a known task: what was running is failed, the rest stays pending
        (("done", "running", "pending"), "failed", None, ("done", "failed", "pending")),
        # stopped while queued
        (("pending", "pending"), "failed", None, ("pending", "pending")),
        # a failure named before the task reported anything
        (("done", "pending"), "failed", 1, ("done", "failed")),
        # a task already done is never turned into a failure
        (("done", "pending"), "failed", 0, ("done", "pending")),
    ],
)
def test_end_of_job(
    before: tuple[str, ...], status: str, failed_order: int | None, after: tuple[str, ...]
) -> None:
    result = end_of_job(_entries(*before), status, failed_order, CallCounts(1, 1, 5))
    assert _states(result) == list(after)
    if failed_order is not None and after[failed_order] == "failed":
        entry = result[failed_order]
        assert (entry["calls_done"], entry["calls_failed"], entry["calls_total"]) == (1, 1, 5)
