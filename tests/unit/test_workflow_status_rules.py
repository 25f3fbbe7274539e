"""The workflow status of reference §5.8, keyed by workflow-task id (workflows.status)."""

from __future__ import annotations

import pytest

from fractal_grpc.workflows.status import workflow_status

# Workflow tasks 1, 2, 3, 4 (ids), in this order unless a case reorders them.
ORDER = [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("task_ids", "history", "job", "expected"),
    [
        # nothing ran
        (ORDER, [], None, []),
        # a finished run of the first two tasks
        (ORDER, [(1, "done"), (2, "done")], None, [(1, 0, "done"), (2, 1, "done")]),
        # later history items win
        (ORDER, [(1, "failed"), (1, "done")], None, [(1, 0, "done")]),
        # stop after the first failure (later items are stale)
        (
            ORDER,
            [(1, "done"), (2, "done"), (3, "done"), (2, "failed")],
            None,
            [(1, 0, "done"), (2, 1, "failed")],
        ),
        # stop after the task of the latest history item: older results downstream are hidden
        (
            ORDER,
            [(1, "done"), (2, "done"), (3, "done"), (1, "done")],
            None,
            [(1, 0, "done")],
        ),
        # a running job of tasks 2..3: its states over the history, up to its last task
        (
            ORDER,
            [(1, "done"), (2, "done"), (3, "done"), (4, "done")],
            [(2, "done"), (3, "running")],
            [(1, 0, "done"), (2, 1, "done"), (3, 2, "running")],
        ),
        (
            ORDER,
            [(1, "done")],
            [(2, "pending"), (3, "pending")],
            [(1, 0, "done"), (2, 1, "pending"), (3, 2, "pending")],
        ),
        # reordered after submission (the reference's #793/#1083): ids, not positions, decide
        (
            [3, 1, 2, 4],
            [(1, "done")],
            [(1, "done"), (2, "running")],
            [(1, 1, "done"), (2, 2, "running")],
        ),
        # ... and without a job, history after a reorder
        (
            [2, 1, 3, 4],
            [(1, "done"), (2, "done")],
            None,
            [(2, 0, "done")],
        ),
        # a workflow task deleted since: not shown, and no longer a stopping point
        (
            [1, 3, 4],
            [(1, "done"), (3, "done"), (2, "done")],
            None,
            [(1, 0, "done"), (3, 1, "done")],
        ),
        # a running job whose slice task was deleted from the workflow
        (
            [1, 3],
            [],
            [(1, "done"), (2, "running")],
            [(1, 0, "done")],
        ),
    ],
)
def test_workflow_status(
    task_ids: list[int],
    history: list[tuple[int, str]],
    job: list[tuple[int, str]] | None,
    expected: list[tuple[int, int, str]],
) -> None:
    got = workflow_status(task_ids, history, job)
    assert [(s.workflow_task_id, s.order, s.state) for s in got] == expected
