"""The admin task query's rules (reference GET /admin/v2/task/), as pure functions.

- *Kinds*: "common" tasks have no owner (collected), "users" tasks have one (custom).
- *Result limit*: ``max_number_of_results`` defaults to 25; a query matching more tasks than
  that is refused as a whole (the reference's 422), so the caller narrows the filters instead
  of reading a truncated answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fractal_grpc.grpckit.errors import FailedPrecondition

DEFAULT_MAX_RESULTS = 25
KINDS = ("common", "users")


@dataclass(frozen=True)
class TaskQuery:
    """What QueryTasks selects; None is "any". ``source`` and ``name`` match as
    case-insensitive substrings, ``version`` and ``owner`` exactly."""

    task_id: int | None = None
    source: str | None = None
    version: str | None = None
    name: str | None = None
    owner: str | None = None
    kind: str | None = None

    def fingerprint(self) -> list[object]:
        return [self.task_id, self.source, self.version, self.name, self.owner, self.kind]


def result_limit(requested: int) -> int:
    """The largest number of matches allowed (0: the reference's default)."""
    return requested if requested > 0 else DEFAULT_MAX_RESULTS


def too_many_results(count: int, limit: int) -> FailedPrecondition | None:
    """The refusal of a query matching ``count`` tasks, or None when within ``limit``."""
    if count <= limit:
        return None
    return FailedPrecondition(
        f"Too many Task V2 ({count} > {limit}): add more query filters",
        reason="TOO_MANY_RESULTS",
        metadata={"count": str(count), "max_number_of_results": str(limit)},
    )


def kind_owner_filter(kind: str | None) -> bool | None:
    """Whether the matching tasks have an owner (True), have none (False), or either (None)."""
    if kind is None:
        return None
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}")
    return kind == "users"
