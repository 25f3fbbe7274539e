"""Job progress: what the CLI shows of a job while it runs.

``task_progress`` is the one place that reads per-task progress out of a ``Job``. It reads the
agreed shape (``JobTaskStatus.state``, ``calls_done``/``calls_failed``/``calls_total``,
``task_name``; ``Job.started``) when the stubs have it, and otherwise the older one (a string
``status`` per task: "submitted", "done", "failed"), in which a task counts as one call and a
job's start is not known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from fractal.v2 import job_pb2

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

_CONTRACT_STATES = {0: PENDING, 1: PENDING, 2: RUNNING, 3: DONE, 4: FAILED}
_OLD_STATES = {"submitted": PENDING, "done": DONE, "failed": FAILED}


@dataclass(frozen=True, slots=True)
class TaskProgress:
    order: int
    workflow_task_id: int
    name: str
    state: str
    calls_done: int
    calls_failed: int
    #: 0 while not known (the task has not started).
    calls_total: int


def _field(message: Any, name: str) -> Any:
    """The field ``name`` of ``message``, or None when its stubs do not have it (the contract's
    fields are read by name, so this module works before and after they land)."""
    if name not in message.DESCRIPTOR.fields_by_name:
        return None
    return getattr(message, name)


def task_progress(job: job_pb2.Job, names: Mapping[int, str] | None = None) -> list[TaskProgress]:
    """One entry per workflow task of the job's slice, in order. ``names`` (workflow-task id →
    task name) fills in names the job does not carry."""
    names = names or {}
    out = []
    for status in job.task_statuses:
        name = _field(status, "task_name") or names.get(status.workflow_task_id)
        name = name or f"task {status.order}"
        contract_state = _field(status, "state")
        if contract_state is not None:
            state = _CONTRACT_STATES.get(int(contract_state), PENDING)
            done = int(_field(status, "calls_done"))
            failed = int(_field(status, "calls_failed"))
            total = int(_field(status, "calls_total"))
        else:
            state = _OLD_STATES.get(_field(status, "status") or "", PENDING)
            done = 1 if state == DONE else 0
            failed = 1 if state == FAILED else 0
            total = 1 if state in (DONE, FAILED) else 0
        out.append(
            TaskProgress(status.order, status.workflow_task_id, name, state, done, failed, total)
        )
    return out


def job_phase(job: job_pb2.Job) -> str:
    """ "queued", "running", "done", "failed" (or "submitted" when the start is not known)."""
    if job.status == job_pb2.JOB_STATUS_DONE:
        return DONE
    if job.status == job_pb2.JOB_STATUS_FAILED:
        return FAILED
    started = _field(job, "started")
    if started is not None:
        return RUNNING if started else "queued"
    return "submitted"


_STYLES = {PENDING: "dim", RUNNING: "cyan", DONE: "green", FAILED: "red"}


class ProgressView:
    """A live display: the job's phase, then a bar per task with its calls done/total."""

    def __init__(self, console: Console, names: Mapping[int, str] | None = None) -> None:
        self.console = console
        self.names = dict(names or {})
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.header = Text("")
        self.bars: dict[int, Any] = {}
        self.live = Live(Group(self.header, self.progress), console=console, refresh_per_second=8)

    def __enter__(self) -> ProgressView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, job: job_pb2.Job) -> None:
        self.header.plain = f"job {job.id}: {job_phase(job)}"
        for item in task_progress(job, self.names):
            label = f"{item.order:>2} {item.name}"
            state = Text(item.state, style=_STYLES.get(item.state, ""))
            total = item.calls_total or None
            completed = item.calls_done + item.calls_failed
            if item.order not in self.bars:
                self.bars[item.order] = self.progress.add_task(
                    label, total=total, completed=completed, state=state
                )
            else:
                self.progress.update(
                    self.bars[item.order], total=total, completed=completed, state=state
                )
        self.live.refresh()
