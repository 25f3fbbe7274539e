"""The status of each workflow task of a workflow on a dataset (reference §5.8), by id.

The reference's algorithm, with one change: the running job's tasks are the ones of its
submitted slice, named by workflow-task id (its snapshot), not the positions
``task_list[first:last+1]`` of the workflow as it is now. So the status stays right after the
workflow is reordered or edited (the reference's issues #793 and #1083).

1. The dataset's history, in order: each item sets its workflow task's status (later items win).
2. No running job: the last history item's workflow task is the last valid one.
   A running job: each task of its slice gets its progress state (``pending`` / ``running`` for
   what the reference calls "submitted", ``done`` / ``failed``), and the slice's last task is
   the last valid one.
3. Walk the workflow's current task list in order and give each task that has a status; stop
   after the first ``failed`` one, or after the last valid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WorkflowTaskState", "workflow_status"]


@dataclass(frozen=True, slots=True)
class WorkflowTaskState:
    workflow_task_id: int
    order: int
    state: str


def workflow_status(
    task_ids: Sequence[int],
    history: Sequence[tuple[int, str]],
    job_slice: Sequence[tuple[int, str]] | None,
) -> list[WorkflowTaskState]:
    """``task_ids``: the workflow's task ids in their current order; ``history``: the dataset
    history as (workflow task id, "done" | "failed"); ``job_slice``: the running job's slice as
    (workflow task id, progress state), None when no job of this workflow and dataset runs."""
    states: dict[int, str] = {}
    for wftask_id, state in history:
        states[wftask_id] = state
    last_valid: int | None
    if job_slice is None:
        last_valid = history[-1][0] if history else None
    else:
        for wftask_id, state in job_slice:
            states[wftask_id] = state
        last_valid = job_slice[-1][0] if job_slice else None
    result = []
    for order, wftask_id in enumerate(task_ids):
        found = states.get(wftask_id)
        if found is None:
            continue
        result.append(WorkflowTaskState(wftask_id, order, found))
        if found == "failed" or wftask_id == last_valid:
            break
    return result
