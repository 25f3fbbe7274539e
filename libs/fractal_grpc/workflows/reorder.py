"""Workflow reorder: the new order must be a permutation of the current workflow-task ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def permutation_violations(
    current: Sequence[int], given: Sequence[int], field: str = "reordered_workflow_task_ids"
) -> list[tuple[str, str]]:
    """Why ``given`` is not a permutation of ``current`` (empty when it is), naming the ids."""
    found = []
    duplicates = sorted(i for i, n in Counter(given).items() if n > 1)
    if duplicates:
        found.append((field, f"repeated ids: {', '.join(map(str, duplicates))}"))
    unknown = sorted(set(given) - set(current))
    if unknown:
        found.append(
            (field, f"not workflow tasks of this workflow: {', '.join(map(str, unknown))}")
        )
    missing = sorted(set(current) - set(given))
    if missing:
        found.append((field, f"missing ids: {', '.join(map(str, missing))}"))
    return found
