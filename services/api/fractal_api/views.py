"""Rows to protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fractal.v2 import (
    job_pb2,
    project_pb2,
    task_collection_pb2,
    task_pb2,
    user_pb2,
    workflow_pb2,
    workflow_service_pb2,
)
from fractal_api import models
from fractal_grpc.collection.naming import package_source
from fractal_grpc.convert import (
    dict_to_struct,
    fill_filters,
    stored_json,
    stored_json_to_struct,
    timestamp,
)


class Row(Protocol):
    """A row read through the ORM (``models.Base`` answers ``row[column]``) or a record of the
    raw pool: the views of the objects that lists read raw take either, so each object has one
    view. JSON columns come decoded from the ORM and as text from the raw pool; the views read
    them through ``stored_json`` / ``stored_json_to_struct``, which take both."""

    def __getitem__(self, key: str, /) -> Any: ...


TASK_TYPES = {
    "non_parallel": task_pb2.TASK_TYPE_NON_PARALLEL,
    "parallel": task_pb2.TASK_TYPE_PARALLEL,
    "compound": task_pb2.TASK_TYPE_COMPOUND,
}
TASK_STATES = {
    "pending": job_pb2.TASK_STATE_PENDING,
    "running": job_pb2.TASK_STATE_RUNNING,
    "done": job_pb2.TASK_STATE_DONE,
    "failed": job_pb2.TASK_STATE_FAILED,
}
JOB_STATUSES = {
    "submitted": job_pb2.JOB_STATUS_SUBMITTED,
    "done": job_pb2.JOB_STATUS_DONE,
    "failed": job_pb2.JOB_STATUS_FAILED,
}
HISTORY_STATUSES = {
    "submitted": project_pb2.HISTORY_STATUS_SUBMITTED,
    "done": project_pb2.HISTORY_STATUS_DONE,
    "failed": project_pb2.HISTORY_STATUS_FAILED,
}


def user_view(user: models.User) -> user_pb2.User:
    msg = user_pb2.User(
        id=user.id,
        email=user.email,
        is_active=user.is_active,
        is_superuser=user.is_superuser,
        is_verified=user.is_verified,
        slurm_accounts=user.slurm_accounts,
    )
    for name in ("slurm_user", "cache_dir", "username"):
        value = getattr(user, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def project_view(project: models.Project) -> project_pb2.Project:
    return project_pb2.Project(
        id=project.id, name=project.name, create_time=timestamp(project.created_at)
    )


def dataset_view(dataset: models.Dataset, *, include_history: bool = True) -> project_pb2.Dataset:
    msg = project_pb2.Dataset(
        id=dataset.id,
        project_id=dataset.project_id,
        name=dataset.name,
        zarr_dir=dataset.zarr_dir,
        create_time=timestamp(dataset.created_at),
        image_count=dataset.image_count,
    )
    fill_filters(msg.filters, dataset.filters)
    if include_history:
        for item in dataset.history:
            entry = msg.history.add(
                status=HISTORY_STATUSES.get(
                    str(item.get("status")), project_pb2.HISTORY_STATUS_UNSPECIFIED
                )
            )
            dict_to_struct(item.get("workflowtask"), entry.workflowtask)
            dict_to_struct(item.get("parallelization"), entry.parallelization)
    return msg


def task_view(
    task: Row,
    *,
    with_schemas: bool = True,
    with_schema_parallel: bool | None = None,
    with_schema_non_parallel: bool | None = None,
) -> task_pb2.Task:
    """The task; ``with_schemas`` sets both args schemas, the other two flags each one."""
    msg = task_pb2.Task(
        id=task["id"],
        name=task["name"],
        type=TASK_TYPES[task["type"]],
        source=task["source"],
        input_types=stored_json(task["input_types"]),
        output_types=stored_json(task["output_types"]),
        owner=task["owner"],
        version=task["version"],
        command_non_parallel=task["command_non_parallel"],
        command_parallel=task["command_parallel"],
        args_schema_version=task["args_schema_version"],
        docs_info=task["docs_info"],
        docs_link=task["docs_link"],
    )
    stored_json_to_struct(task["meta_non_parallel"], msg.meta_non_parallel)
    stored_json_to_struct(task["meta_parallel"], msg.meta_parallel)
    if with_schemas if with_schema_non_parallel is None else with_schema_non_parallel:
        stored_json_to_struct(task["args_schema_non_parallel"], msg.args_schema_non_parallel)
    if with_schemas if with_schema_parallel is None else with_schema_parallel:
        stored_json_to_struct(task["args_schema_parallel"], msg.args_schema_parallel)
    return msg


def workflow_task_view(
    wftask: Row,
    task: Row,
    *,
    with_schemas: bool = True,
    tasks_seen: dict[int, task_pb2.Task] | None = None,
) -> workflow_pb2.WorkflowTask:
    """The workflow task with its task; ``tasks_seen`` (task id → message) keeps the task
    messages already built for this answer, so a task used by many workflows of a page is
    converted once."""
    task_msg = tasks_seen.get(task["id"]) if tasks_seen is not None else None
    if task_msg is None:
        task_msg = task_view(task, with_schemas=with_schemas)
        if tasks_seen is not None:
            tasks_seen[task["id"]] = task_msg
    msg = workflow_pb2.WorkflowTask(
        id=wftask["id"],
        workflow_id=wftask["workflow_id"],
        order=wftask["order"],
        task_id=wftask["task_id"],
        task_type=TASK_TYPES[wftask["task_type"]],
        task=task_msg,
    )
    stored_json_to_struct(wftask["args_non_parallel"], msg.args_non_parallel)
    stored_json_to_struct(wftask["args_parallel"], msg.args_parallel)
    stored_json_to_struct(wftask["meta_non_parallel"], msg.meta_non_parallel)
    stored_json_to_struct(wftask["meta_parallel"], msg.meta_parallel)
    fill_filters(msg.input_filters, stored_json(wftask["input_filters"]))
    return msg


def workflow_view(
    workflow: Row,
    tasks: Sequence[tuple[Row, Row]],
    *,
    with_schemas: bool = True,
    tasks_seen: dict[int, task_pb2.Task] | None = None,
) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        id=workflow["id"],
        project_id=workflow["project_id"],
        name=workflow["name"],
        create_time=timestamp(workflow["created_at"]),
        task_list=[
            workflow_task_view(w, t, with_schemas=with_schemas, tasks_seen=tasks_seen)
            for w, t in tasks
        ],
    )


def workflow_views(
    workflows: Sequence[Row],
    listing: dict[int, list[tuple[Row, Row]]],
    *,
    with_schemas: bool,
) -> list[workflow_pb2.Workflow]:
    """A page of workflows, each task converted once for the whole page."""
    seen: dict[int, task_pb2.Task] = {}
    return [
        workflow_view(w, listing[w["id"]], with_schemas=with_schemas, tasks_seen=seen)
        for w in workflows
    ]


def job_view(
    job: Row, *, log: str | None = None, with_log: bool = True, with_dumps: bool = True
) -> job_pb2.Job:
    """The job; ``with_log`` reads its log column (or takes ``log``, a live one),
    ``with_dumps`` its three dumps (a list's rows may come without the log)."""
    started_at = job["started_at"]
    msg = job_pb2.Job(
        id=job["id"],
        user_email=job["user_email"],
        status=JOB_STATUSES[job["status"]],
        working_dir=job["working_dir"] or "",
        working_dir_user=job["working_dir_user"] or "",
        first_task_index=job["first_task_index"],
        last_task_index=job["last_task_index"],
        start_time=timestamp(job["start_timestamp"]),
        end_time=timestamp(job["end_timestamp"]),
        started_time=timestamp(started_at),
        version=job["version"],
        started=started_at is not None,
        project_id=job["project_id"],
        workflow_id=job["workflow_id"],
        dataset_id=job["dataset_id"],
        slurm_account=job["slurm_account"],
        worker_init=job["worker_init"],
        task_statuses=[
            job_pb2.JobTaskStatus(
                workflow_task_id=item["workflow_task_id"],
                order=item["order"],
                task_name=item["task_name"],
                state=TASK_STATES[item["state"]],
                calls_done=item["calls_done"],
                calls_failed=item["calls_failed"],
                calls_total=item["calls_total"],
            )
            for item in stored_json(job["task_statuses"])
        ],
    )
    if with_log:
        msg.log = log if log is not None else (job["log"] or "")
    if with_dumps:
        stored_json_to_struct(job["project_dump"], msg.project_dump)
        stored_json_to_struct(job["workflow_dump"], msg.workflow_dump)
        stored_json_to_struct(job["dataset_dump"], msg.dataset_dump)
    return msg


def task_dump(task: models.Task) -> dict[str, Any]:
    """The reference's TaskDumpV2 (used in history items and job snapshots)."""
    return {
        "id": task.id,
        "name": task.name,
        "type": task.type,
        "command_non_parallel": task.command_non_parallel,
        "command_parallel": task.command_parallel,
        "source": task.source,
        "owner": task.owner,
        "version": task.version,
        "input_types": task.input_types,
        "output_types": task.output_types,
    }


def workflow_export_view(
    workflow: models.Workflow, tasks: list[tuple[models.WorkflowTask, models.Task]]
) -> workflow_service_pb2.WorkflowExport:
    """The portable form of a workflow: tasks by source, no ids."""
    msg = workflow_service_pb2.WorkflowExport(name=workflow.name)
    for wftask, task in tasks:
        item = msg.task_list.add(task_source=task.source)
        dict_to_struct(wftask.args_non_parallel, item.args_non_parallel)
        dict_to_struct(wftask.args_parallel, item.args_parallel)
        dict_to_struct(wftask.meta_non_parallel, item.meta_non_parallel)
        dict_to_struct(wftask.meta_parallel, item.meta_parallel)
        fill_filters(item.input_filters, wftask.input_filters)
    return msg


COLLECTION_STATES = {
    "pending": task_collection_pb2.COLLECTION_STATE_PENDING,
    "installing": task_collection_pb2.COLLECTION_STATE_INSTALLING,
    "OK": task_collection_pb2.COLLECTION_STATE_OK,
    "failed": task_collection_pb2.COLLECTION_STATE_FAILED,
}

COLLECTION_KINDS = {
    "collect": task_collection_pb2.COLLECTION_KIND_COLLECT,
    "deactivate": task_collection_pb2.COLLECTION_KIND_DEACTIVATE,
    "reactivate": task_collection_pb2.COLLECTION_KIND_REACTIVATE,
}


def collection_view(
    row: models.TaskCollection, *, with_log: bool = False
) -> task_collection_pb2.TaskCollection:
    view = task_collection_pb2.TaskCollection(
        id=row.id,
        state=COLLECTION_STATES[row.state],
        package_name=row.package_name,
        python_version=row.python_version,
        pinned_package_versions=row.pins,
        task_ids=row.task_ids,
        version=row.version,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        user_id=row.user_id or 0,
        kind=COLLECTION_KINDS[row.kind],
        target_collection_id=row.target_id or 0,
        active=row.active,
    )
    if row.requested_version:
        view.requested_version = row.requested_version
    if row.package_extras:
        view.package_extras = row.package_extras
    for name in ("package_version", "wheel_path", "uploaded_wheel", "env_dir", "freeze", "error"):
        value = getattr(row, name)
        if value is not None:
            setattr(view, name, value)
    if row.package_version is not None:
        view.source = package_source(
            row.origin,
            row.package_name,
            row.package_version,
            row.package_extras or None,
            row.python_version,
        )
    if with_log:
        view.log = row.log
    return view
