"""Task rules: the type follows from the commands; a field of the other side is refused."""

from __future__ import annotations

from collections.abc import Iterable

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
