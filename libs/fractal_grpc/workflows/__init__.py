"""Task and workflow rules of the reference (§3.2 "Workflows", "Workflow tasks", "Tasks"), as pure
functions: the servicers call them between loading and changing."""

from fractal_grpc.workflows.reorder import permutation_violations, source_violations
from fractal_grpc.workflows.task_rules import (
    TASK_FIELDS_BY_SIDE,
    command_violation,
    forbidden_side,
    may_edit_task,
    task_field_violations,
    task_in_use_message,
    task_type,
)
from fractal_grpc.workflows.wftask_rules import (
    RESERVED_ARGS,
    WFTASK_FIELDS,
    initial_wftask_fields,
    reserved_key_violations,
    updated_wftask_fields,
    wftask_type_violations,
)

Violation = tuple[str, str]

__all__ = [
    "RESERVED_ARGS",
    "TASK_FIELDS_BY_SIDE",
    "WFTASK_FIELDS",
    "Violation",
    "command_violation",
    "forbidden_side",
    "may_edit_task",
    "task_in_use_message",
    "initial_wftask_fields",
    "permutation_violations",
    "reserved_key_violations",
    "source_violations",
    "task_field_violations",
    "task_type",
    "updated_wftask_fields",
    "wftask_type_violations",
]
