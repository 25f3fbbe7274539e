"""Admin job rules, as pure functions.

- *Filters* (reference GET /admin/v2/job/): every given filter must match; ``user_id`` means
  "of a project the user is a member of". Time ranges are instants (timezone-aware): a naive
  datetime is refused, as the reference's 422; so is a range whose min is after its max (the
  reference answers an empty list: a departure, since such a query is a client's mistake).
- *Mark failed* (reference PATCH /admin/v2/job/{id}/): the only change is SUBMITTED → FAILED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fractal_grpc.grpckit.errors import FailedPrecondition

JOB_STATUSES = ("submitted", "done", "failed")


@dataclass(frozen=True)
class JobFilter:
    """What ListAllJobs selects; None is "any"."""

    job_id: int | None = None
    user_id: int | None = None
    project_id: int | None = None
    dataset_id: int | None = None
    workflow_id: int | None = None
    status: str | None = None
    start_min: datetime | None = None
    start_max: datetime | None = None
    end_min: datetime | None = None
    end_max: datetime | None = None

    def fingerprint(self) -> list[object]:
        """The filter as plain values, for page tokens bound to the query."""
        return [
            self.job_id,
            self.user_id,
            self.project_id,
            self.dataset_id,
            self.workflow_id,
            self.status,
            *(t.isoformat() if t else None for t in self._times()),
        ]

    def _times(self) -> tuple[datetime | None, ...]:
        return (self.start_min, self.start_max, self.end_min, self.end_max)


_RANGES = (
    ("start_time_min", "start_time_max", "start_min", "start_max"),
    ("end_time_min", "end_time_max", "end_min", "end_max"),
)


def job_filter_violations(flt: JobFilter) -> list[tuple[str, str]]:
    """Why ``flt`` is not a valid query, as ``(request field, why)`` pairs."""
    violations: list[tuple[str, str]] = []
    if flt.status is not None and flt.status not in JOB_STATUSES:
        violations.append(("status", f"must be one of {', '.join(JOB_STATUSES)}"))
    for low_field, high_field, low_name, high_name in _RANGES:
        low, high = getattr(flt, low_name), getattr(flt, high_name)
        for field, value in ((low_field, low), (high_field, high)):
            if value is not None and value.tzinfo is None:
                violations.append((field, "must be timezone-aware"))
        if (
            low is not None
            and high is not None
            and low.tzinfo is not None
            and high.tzinfo is not None
            and low > high
        ):
            violations.append((low_field, f"must not be after {high_field}"))
    return violations


def mark_failed_refusal(job_id: int, status: str) -> FailedPrecondition | None:
    """The error for marking a job in ``status`` FAILED, or None when it may be."""
    if status == "submitted":
        return None
    return FailedPrecondition(
        f"Job {job_id} is already {status}: only a submitted job can be marked failed",
        reason="JOB_ALREADY_ENDED",
        metadata={"job_id": str(job_id), "status": status},
    )


def mark_failed_log(log: str | None, when: datetime) -> str:
    """The job's log after a superuser marked it failed: what it had, and a line saying so."""
    line = f"Job marked as failed by a superuser at {when.isoformat()}."
    return f"{log.rstrip()}\n{line}" if log else line
