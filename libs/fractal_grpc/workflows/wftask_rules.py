"""Workflow-task rules: reserved args keys, fields of the other side, and what is stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fractal_grpc.workflows.task_rules import forbidden_side

# Keys the runner sets itself; a workflow task may not give them (reference).
RESERVED_ARGS = ("zarr_url", "zarr_urls", "zarr_dir", "init_args")
WFTASK_FIELDS: dict[str, tuple[str, str]] = {
    "non_parallel": ("args_non_parallel", "meta_non_parallel"),
    "parallel": ("args_parallel", "meta_parallel"),
}

Given = Mapping[str, Mapping[str, Any] | None]


def reserved_key_violations(given: Given) -> list[tuple[str, str]]:
    """Args fields that use a reserved key, each naming the keys."""
    found = []
    for field in ("args_non_parallel", "args_parallel"):
        reserved = sorted(set(given.get(field) or {}) & set(RESERVED_ARGS))
        if reserved:
            found.append((field, f"reserved keys are not allowed: {', '.join(reserved)}"))
    return found


def wftask_type_violations(kind: str, given: Given) -> list[tuple[str, str]]:
    """Reference rule (insert and update): a parallel workflow task takes no non-parallel args or
    meta, a non-parallel one no parallel args or meta. A field counts as given when not None."""
    side = forbidden_side(kind)
    if side is None:
        return []
    label = kind.replace("_", "-")
    return [
        (field, f"not allowed for a {label} task")
        for field in WFTASK_FIELDS[side]
        if given.get(field) is not None
    ]


def initial_wftask_fields(
    task_meta_non_parallel: Mapping[str, Any] | None,
    task_meta_parallel: Mapping[str, Any] | None,
    given: Given,
) -> dict[str, dict[str, Any] | None]:
    """What a new workflow task stores (reference ``_workflow_insert_task`` for V2 tasks): args
    exactly as given (no schema defaults: the task applies its own at run time), meta = the task's
    meta updated with the given meta; an empty dict is stored as None."""
    meta_np = {**(task_meta_non_parallel or {}), **(given.get("meta_non_parallel") or {})}
    meta_p = {**(task_meta_parallel or {}), **(given.get("meta_parallel") or {})}
    return {
        "args_non_parallel": dict(given.get("args_non_parallel") or {}) or None,
        "args_parallel": dict(given.get("args_parallel") or {}) or None,
        "meta_non_parallel": meta_np or None,
        "meta_parallel": meta_p or None,
    }


def updated_wftask_fields(given: Given) -> dict[str, dict[str, Any] | None]:
    """What an update writes (reference PATCH for V2 tasks): each given args field replaces the
    old args exactly as given (not merged; empty -> None), each given meta field replaces the old
    meta as given. Fields not given are absent (kept)."""
    changes: dict[str, dict[str, Any] | None] = {}
    for field in ("args_non_parallel", "args_parallel"):
        if given.get(field) is not None:
            changes[field] = dict(given[field] or {}) or None
    for field in ("meta_non_parallel", "meta_parallel"):
        if given.get(field) is not None:
            changes[field] = dict(given[field] or {})
    return changes
