"""The api's table of unique rules (which error a violated constraint answers) and the request
fingerprint behind request_id reuse checks."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from sqlalchemy.exc import IntegrityError

from fractal.v2 import (
    dataset_service_pb2,
    job_service_pb2,
    user_service_pb2,
    workflow_service_pb2,
)
from fractal_api.models import Base
from fractal_api.store.conflicts import RULES, conflict, violated_constraint
from fractal_api.store.requests import method_of, request_hash


def _integrity_error(constraint: str, exc_type: type[Exception]) -> IntegrityError:
    """An IntegrityError as SQLAlchemy's asyncpg dialect raises it: the driver's error is the
    cause of the dialect's error, which is the cause and ``orig`` of SQLAlchemy's."""
    driver = exc_type("duplicate key value")
    driver.constraint_name = constraint  # type: ignore[attr-defined]
    adapted = Exception("adapted")
    adapted.__cause__ = driver
    wrapped = IntegrityError("INSERT ...", {}, adapted)
    wrapped.__cause__ = adapted
    return wrapped


def test_a_unique_violation_names_its_constraint() -> None:
    exc = _integrity_error("uq_tasks_source", asyncpg.UniqueViolationError)
    assert violated_constraint(exc) == "uq_tasks_source"


def test_other_integrity_errors_are_not_unique_violations() -> None:
    exc = _integrity_error("fk_workflow_tasks_task_id_tasks", asyncpg.ForeignKeyViolationError)
    assert violated_constraint(exc) is None
    assert violated_constraint(ValueError("x")) is None


@pytest.mark.parametrize(
    "constraint,values,code,reason,field,message",
    [
        (
            "uq_users_email_lower",
            {"email": "A@x.y"},
            grpc.StatusCode.ALREADY_EXISTS,
            "USER_EXISTS",
            "email",
            "A user with email A@x.y already exists",
        ),
        (
            "uq_project_members_user_id_project_name",
            {"project_name": "p1", "user_id": 3},
            grpc.StatusCode.ALREADY_EXISTS,
            "PROJECT_NAME_IN_USE",
            "name",
            "Project name (p1) already in use",
        ),
        (
            "uq_workflows_project_id_name",
            {"name": "wf", "project_id": 7},
            grpc.StatusCode.ALREADY_EXISTS,
            "WORKFLOW_NAME_IN_USE",
            "name",
            "Workflow with name=wf already exists in project 7",
        ),
        (
            "uq_tasks_source",
            {"source": "me:t"},
            grpc.StatusCode.ALREADY_EXISTS,
            "TASK_SOURCE_IN_USE",
            "source",
            "Source 'me:t' already in use",
        ),
        (
            "uq_jobs_dataset_submitted",
            {"dataset_id": 5},
            grpc.StatusCode.FAILED_PRECONDITION,
            "DATASET_IN_USE",
            "dataset_id",
            "Dataset 5 is already in use in submitted job(s).",
        ),
    ],
)
def test_each_rule_answers_its_error(
    constraint: str,
    values: dict[str, object],
    code: grpc.StatusCode,
    reason: str,
    field: str,
    message: str,
) -> None:
    error = conflict(constraint, values)
    assert error is not None
    assert (error.code, error.reason, error.message) == (code, reason, message)
    assert error.metadata == {"field": field}
    expected = [(field, "already in use")] if code == grpc.StatusCode.ALREADY_EXISTS else []
    assert error.violations == expected


def test_an_unknown_constraint_has_no_rule() -> None:
    assert conflict("uq_something_else", {}) is None
    assert conflict(None, {}) is None


def test_every_rule_names_a_unique_constraint_of_the_models() -> None:
    names = set()
    for table in Base.metadata.tables.values():
        names |= {c.name for c in table.constraints if c.name and c.name.startswith("uq_")}
        names |= {i.name for i in table.indexes if i.unique and i.name}
    assert set(RULES) <= names


def test_request_hash_ignores_the_request_id_and_map_order() -> None:
    one = workflow_service_pb2.CreateWorkflowTaskRequest(project_id=1, request_id="a")
    one.args_parallel.update({"x": 1, "y": {"b": 2, "a": 1}})
    two = workflow_service_pb2.CreateWorkflowTaskRequest(project_id=1, request_id="b")
    two.args_parallel.update({"y": {"a": 1, "b": 2}, "x": 1})
    assert request_hash(one) == request_hash(two)
    assert one.request_id == "a"  # the caller's message is left alone
    three = workflow_service_pb2.CreateWorkflowTaskRequest(project_id=1, request_id="a")
    three.args_parallel.update({"x": 2, "y": {"a": 1, "b": 2}})
    assert request_hash(three) != request_hash(one)


def test_request_hash_tells_an_unset_optional_from_its_default() -> None:
    unset = job_service_pb2.SubmitJobRequest(project_id=1)
    empty = job_service_pb2.SubmitJobRequest(project_id=1, worker_init="")
    assert request_hash(unset) != request_hash(empty)


def test_request_hash_leaves_out_passwords() -> None:
    one = user_service_pb2.CreateUserRequest(email="a@x.y", password="one")
    two = user_service_pb2.CreateUserRequest(email="a@x.y", password="two")
    other = user_service_pb2.CreateUserRequest(email="b@x.y", password="one")
    assert request_hash(one) == request_hash(two) != request_hash(other)


def test_method_of_a_request() -> None:
    assert method_of(dataset_service_pb2.CreateDatasetRequest()) == "CreateDataset"
    assert method_of(job_service_pb2.SubmitJobRequest()) == "SubmitJob"
