"""Per-task progress of a job: the rules, as pure functions over the stored entries.

A job keeps one entry per workflow task of its slice, in order (``jobs.task_statuses``):
``{workflow_task_id, order, task_name, state, calls_done, calls_failed, calls_total}``, with
``state`` one of ``pending``, ``running``, ``done``, ``failed``.

- Every entry starts ``pending`` with no calls (submission).
- A progress report of the runner sets the task ``running`` with the reported counts, each
  count never going down: the runner counts completion records, which survive its restarts,
  so a resumed run that reports before it has listed them (or a late report) does not move a
  progress bar backwards. A task already ``done`` or ``failed`` keeps what it has.
- An applied result sets it ``done`` with its final counts.
- The end of a job: FAILED sets the failed task (when known) ``failed`` with its counts, and any
  task still ``running`` ``failed`` too (it was interrupted); tasks never reached stay
  ``pending``. DONE changes nothing (every task was applied on the way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "RUNNING",
    "STATES",
    "CallCounts",
    "apply_report",
    "end_of_job",
    "initial_entries",
    "mark_done",
]

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)
_ENDED = (DONE, FAILED)

Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallCounts:
    done: int = 0
    failed: int = 0
    total: int = 0


def initial_entries(tasks: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """The entries of a new job, from its slice's ``(workflow_task_id, order, task_name)``."""
    return [
        {
            "workflow_task_id": task["workflow_task_id"],
            "order": task["order"],
            "task_name": task["task_name"],
            "state": PENDING,
            "calls_done": 0,
            "calls_failed": 0,
            "calls_total": 0,
        }
        for task in tasks
    ]


def _with(entry: Entry, state: str, counts: CallCounts | None) -> Entry:
    new = {**entry, "state": state}
    if counts is not None:
        new.update(calls_done=counts.done, calls_failed=counts.failed, calls_total=counts.total)
    return new


def _set(
    entries: Sequence[Entry], order: int, state: str, counts: CallCounts | None, *, keep_ended: bool
) -> tuple[list[Entry], bool]:
    changed = False
    result = []
    for entry in entries:
        if entry["order"] == order and not (keep_ended and entry["state"] in _ENDED):
            new = _with(entry, state, counts)
            changed = changed or new != entry
            result.append(new)
        else:
            result.append(entry)
    return result, changed


def apply_report(
    entries: Sequence[Entry], order: int, counts: CallCounts
) -> tuple[list[Entry], bool]:
    """A running task's progress; returns the entries and whether anything changed."""
    entry = next((e for e in entries if e["order"] == order), None)
    if entry is not None:
        counts = CallCounts(
            done=max(counts.done, entry["calls_done"]),
            failed=max(counts.failed, entry["calls_failed"]),
            total=max(counts.total, entry["calls_total"]),
        )
    return _set(entries, order, RUNNING, counts, keep_ended=True)


def mark_done(entries: Sequence[Entry], order: int, counts: CallCounts | None) -> list[Entry]:
    """The task's result was applied (``counts`` None: keep the last reported counts)."""
    result, _ = _set(entries, order, DONE, counts, keep_ended=False)
    return result


def end_of_job(
    entries: Sequence[Entry],
    job_status: str,
    failed_order: int | None = None,
    failed_counts: CallCounts | None = None,
) -> list[Entry]:
    """The entries once the job ended with ``job_status`` (``done`` or ``failed``)."""
    if job_status != FAILED:
        return list(entries)
    result = []
    for entry in entries:
        if entry["order"] == failed_order and entry["state"] != DONE:
            result.append(_with(entry, FAILED, failed_counts))
        elif entry["state"] == RUNNING:
            result.append(_with(entry, FAILED, None))
        else:
            result.append(entry)
    return result
