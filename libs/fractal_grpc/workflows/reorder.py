"""Workflow reorder (a permutation of the current workflow-task ids) and import resolution."""

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


def source_violations(
    wanted: Sequence[str], found: Sequence[tuple[str, int]], field: str = "workflow.task_list"
) -> list[tuple[str, str]]:
    """Import resolution (reference): each item's source must match exactly one task. ``found``
    is (source, task id) of the tasks whose source is among ``wanted``."""
    counts = Counter(source for source, _ in found)
    problems = []
    for index, source in enumerate(wanted):
        if counts[source] != 1:
            problems.append(
                (
                    f"{field}[{index}].task_source",
                    f"found {counts[source]} tasks with source={source!r}",
                )
            )
    return problems
