"""The unique rules of the api schema and the error each one answers when it is violated.

The database decides every uniqueness rule (a unique constraint or index), so two concurrent
writes cannot both pass a check made before them; this table is the one place that turns a
violated constraint into the client's error: which request field, which reason, which message.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fractal_grpc.grpckit.errors import AlreadyExists, DomainError, FailedPrecondition

UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True)
class UniqueRule:
    field: str
    """The request field that carries the duplicated value."""
    reason: str
    message: str
    """Formatted with the written row's column values."""
    error: type[DomainError] = AlreadyExists


RULES: dict[str, UniqueRule] = {
    # Reference: emails are unique, compared case-insensitively.
    "uq_users_email_lower": UniqueRule(
        "email", "USER_EXISTS", "A user with email {email} already exists"
    ),
    # Reference: a user has at most one project of a name (over the projects they belong to).
    "uq_project_members_user_id_project_name": UniqueRule(
        "name", "PROJECT_NAME_IN_USE", "Project name ({project_name}) already in use"
    ),
    "uq_workflows_project_id_name": UniqueRule(
        "name",
        "WORKFLOW_NAME_IN_USE",
        "Workflow with name={name} already exists in project {project_id}",
    ),
    "uq_tasks_source": UniqueRule(
        "source", "TASK_SOURCE_IN_USE", "Source '{source}' already in use"
    ),
    # At most one submitted job per dataset (reference: 422, a state the client must wait out).
    "uq_jobs_dataset_submitted": UniqueRule(
        "dataset_id",
        "DATASET_IN_USE",
        "Dataset {dataset_id} is already in use in submitted job(s).",
        FailedPrecondition,
    ),
}


def violated_constraint(exc: BaseException) -> str | None:
    """The name of the unique constraint a database error violated, if it is a unique violation
    (the driver's exception is somewhere in the chain of causes SQLAlchemy wraps around it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "sqlstate", None) == UNIQUE_VIOLATION and getattr(
            seen, "constraint_name", None
        ):
            return str(seen.constraint_name)  # type: ignore[attr-defined]
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return None


def conflict(constraint: str | None, values: Mapping[str, Any]) -> DomainError | None:
    """The client's error for a violated unique constraint, or None if it is not a known rule."""
    rule = RULES.get(constraint or "")
    if rule is None:
        return None
    names = [name for _, name, _, _ in string.Formatter().parse(rule.message) if name]
    message = rule.message.format_map({name: values.get(name) for name in names})
    violations = [(rule.field, "already in use")] if rule.error is AlreadyExists else []
    return rule.error(
        message, reason=rule.reason, violations=violations, metadata={"field": rule.field}
    )
