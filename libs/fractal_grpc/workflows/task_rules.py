"""Task rules: the type follows from the commands; a field of the other side is refused."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

# The fields of a task that belong to one side (the non-parallel or the parallel part).
TASK_FIELDS_BY_SIDE: dict[str, tuple[str, ...]] = {
    "non_parallel": ("command_non_parallel", "args_schema_non_parallel", "meta_non_parallel"),
    "parallel": ("command_parallel", "args_schema_parallel", "meta_parallel"),
}


def task_type(command_non_parallel: str | None, command_parallel: str | None) -> str:
    """Reference rule: both commands make a compound task, else the one command names the type."""
    if command_non_parallel and command_parallel:
        return "compound"
    return "parallel" if command_parallel else "non_parallel"


def forbidden_side(kind: str) -> str | None:
    """The side a task (or workflow task) of type ``kind`` must not have; None for compound."""
    return {"parallel": "non_parallel", "non_parallel": "parallel"}.get(kind)


def task_field_violations(kind: str, given: Iterable[str]) -> list[tuple[str, str]]:
    """Reference rule (create and update): a parallel task has no non-parallel command, schema or
    meta, and the reverse. ``given`` names the fields the request sets (non-empty)."""
    side = forbidden_side(kind)
    if side is None:
        return []
    label = kind.replace("_", "-")
    return [
        (field, f"not allowed for a {label} task")
        for field in TASK_FIELDS_BY_SIDE[side]
        if field in set(given)
    ]


def command_violation(field: str, value: str) -> tuple[str, str] | None:
    """A command line must be non-empty and split as a shell would split it."""
    if not value.strip():
        return (field, "must not be empty")
    try:
        shlex.split(value)
    except ValueError as exc:
        return (field, f"not a valid command line: {exc}")
    return None


def may_edit_task(task_owner: str | None, user_owner_name: str | None, superuser: bool) -> bool:
    """Reference ``_get_task_check_owner``: a superuser edits any task; a task without owner
    (collected) only a superuser; otherwise the owner, by username falling back to slurm_user."""
    if superuser:
        return True
    return task_owner is not None and user_owner_name == task_owner


def task_in_use_message(task_id: int, mine: Sequence[tuple[int, int, str]], others: int) -> str:
    """Reference message of a refused delete: the caller's workflows by name, others counted."""
    parts = [f"project {p}, workflow {w} ({name!r})" for p, w, name in mine]
    text = f"Cannot remove Task {task_id} because it is currently used"
    if parts:
        text += f" in your workflows: {'; '.join(parts)}"
    if others:
        text += f"{' and' if parts else ''} in {others} workflow(s) of other users"
    return text + "."
