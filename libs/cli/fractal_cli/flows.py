"""`fractal task|workflow ...`"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format

from fractal.v2 import task_pb2, workflow_pb2, workflow_service_pb2
from fractal_cli import collect
from fractal_cli.core import json_object, pages, session
from fractal_cli.output import Column, to_dict
from fractal_grpc.convert import filters_to_dict, struct_dict

task_app = typer.Typer(help="Tasks: create, list, edit; collect task packages.")
workflow_app = typer.Typer(help="Workflows of a project and their tasks; import/export.")

TASK_TYPES = {
    task_pb2.TASK_TYPE_NON_PARALLEL: "non_parallel",
    task_pb2.TASK_TYPE_PARALLEL: "parallel",
    task_pb2.TASK_TYPE_COMPOUND: "compound",
}

TASK_COLUMNS: list[Column] = [
    ("id", lambda t: t.id),
    ("name", lambda t: t.name),
    ("type", lambda t: TASK_TYPES.get(t.type, "")),
    ("source", lambda t: t.source),
    ("version", lambda t: t.version if t.HasField("version") else None),
    ("owner", lambda t: t.owner if t.HasField("owner") else None),
    ("input_types", lambda t: dict(t.input_types)),
    ("output_types", lambda t: dict(t.output_types)),
]
TASK_DETAIL: list[Column] = [
    *TASK_COLUMNS,
    ("command_non_parallel", lambda t: t.command_non_parallel or None),
    ("command_parallel", lambda t: t.command_parallel or None),
]
WORKFLOW_COLUMNS: list[Column] = [
    ("id", lambda w: w.id),
    ("project", lambda w: w.project_id),
    ("name", lambda w: w.name),
    ("tasks", lambda w: len(w.task_list)),
]
WFTASK_COLUMNS: list[Column] = [
    ("id", lambda w: w.id),
    ("order", lambda w: w.order),
    ("task", lambda w: f"{w.task.name} ({w.task_id})"),
    ("type", lambda w: TASK_TYPES.get(w.task_type, "")),
    ("args_non_parallel", lambda w: struct_dict(w.args_non_parallel) or None),
    ("args_parallel", lambda w: struct_dict(w.args_parallel) or None),
    ("input_filters", lambda w: filters_to_dict(w.input_filters)),
]

Json = Annotated[str | None, typer.Option(help="JSON object, or @file")]


@task_app.command("new")
def task_new(
    ctx: typer.Context,
    name: str,
    source: Annotated[str, typer.Option(help="unique identifier of the task")],
    command_non_parallel: Annotated[str | None, typer.Option()] = None,
    command_parallel: Annotated[str | None, typer.Option()] = None,
    version: Annotated[str | None, typer.Option()] = None,
    meta_non_parallel: Json = None,
    meta_parallel: Json = None,
    args_schema_non_parallel: Json = None,
    args_schema_parallel: Json = None,
    args_schema_version: Annotated[str | None, typer.Option()] = None,
    input_types: Json = None,
    output_types: Json = None,
    docs_info: Annotated[str | None, typer.Option()] = None,
    docs_link: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a custom task: a command (or two) following the Fractal task contract."""
    task = (
        session(ctx)
        .client()
        .create_task(
            name,
            source,
            command_non_parallel=command_non_parallel,
            command_parallel=command_parallel,
            version=version,
            meta_non_parallel=json_object(meta_non_parallel, "--meta-non-parallel"),
            meta_parallel=json_object(meta_parallel, "--meta-parallel"),
            args_schema_non_parallel=json_object(
                args_schema_non_parallel, "--args-schema-non-parallel"
            ),
            args_schema_parallel=json_object(args_schema_parallel, "--args-schema-parallel"),
            args_schema_version=args_schema_version,
            input_types=json_object(input_types, "--input-types"),
            output_types=json_object(output_types, "--output-types"),
            docs_info=docs_info,
            docs_link=docs_link,
        )
    )
    session(ctx).out.one(task, TASK_DETAIL, title=f"task {task.id}")


@task_app.command("list")
def task_list(ctx: typer.Context) -> None:
    c = session(ctx).client()
    tasks = pages(lambda t: c.list_tasks(page_token=t), "tasks")
    session(ctx).out.many(tasks, TASK_COLUMNS, title="tasks")


@task_app.command("show")
def task_show(ctx: typer.Context, task_id: int) -> None:
    task = session(ctx).client().get_task(task_id)
    session(ctx).out.one(task, TASK_DETAIL, title=f"task {task.id}")


@task_app.command("edit")
def task_edit(
    ctx: typer.Context,
    task_id: int,
    new_name: Annotated[str | None, typer.Option()] = None,
    new_version: Annotated[str | None, typer.Option()] = None,
    new_command_non_parallel: Annotated[str | None, typer.Option()] = None,
    new_command_parallel: Annotated[str | None, typer.Option()] = None,
    new_input_types: Json = None,
    new_output_types: Json = None,
) -> None:
    task = (
        session(ctx)
        .client()
        .update_task(
            task_id,
            name=new_name,
            version=new_version,
            command_non_parallel=new_command_non_parallel,
            command_parallel=new_command_parallel,
            input_types=json_object(new_input_types, "--new-input-types"),
            output_types=json_object(new_output_types, "--new-output-types"),
        )
    )
    session(ctx).out.one(task, TASK_DETAIL, title=f"task {task.id}")


@task_app.command("delete")
def task_delete(ctx: typer.Context, task_id: int) -> None:
    session(ctx).client().delete_task(task_id)
    session(ctx).out.done(f"task {task_id} deleted", {"deleted": {"task_id": task_id}})


@task_app.command("collect")
def task_collect(
    ctx: typer.Context,
    package: Annotated[
        str, typer.Argument(help="a package name of the index, or the path of a wheel file")
    ],
    package_version: Annotated[str | None, typer.Option()] = None,
    python_version: Annotated[str | None, typer.Option(help='"3.X"; default: the server\'s')] = (
        None
    ),
    package_extras: Annotated[str | None, typer.Option(help="comma-separated")] = None,
    pinned_dependency: Annotated[
        list[str] | None, typer.Option(help="NAME=VERSION, repeatable")
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow it to its end, streaming the log")] = False,
) -> None:
    """Collect the tasks of a Python package into an environment of its own.

    A wheel file that exists on this machine is uploaded; anything else is sent as is (a name
    of the server's index, or a wheel path on the server's machine)."""
    collect.collect(
        session(ctx),
        package,
        package_version=package_version,
        python_version=python_version,
        package_extras=package_extras,
        pins=collect.parse_pins(pinned_dependency or []),
        watch=watch,
    )


@task_app.command("check-collection")
def task_check_collection(
    ctx: typer.Context,
    state_id: Annotated[int, typer.Argument(help="the collection's id")],
    include_logs: Annotated[bool, typer.Option()] = False,
    watch: Annotated[bool, typer.Option(help="follow it to its end, streaming the log")] = False,
) -> None:
    """The state of a task collection (with --watch: until it ends)."""
    s = session(ctx)
    if watch:
        collect.follow(s, s.client().get_collection(state_id))
        return
    collect.check(s, state_id, include_logs=include_logs)


# -- workflows --------------------------------------------------------------------------------


def _show_workflow(ctx: typer.Context, workflow: workflow_pb2.Workflow) -> None:
    out = session(ctx).out
    if out.json_mode:
        out.json(to_dict(workflow))
        return
    out.one(workflow, WORKFLOW_COLUMNS, title=f"workflow {workflow.id}")
    if workflow.task_list:
        out.many(workflow.task_list, WFTASK_COLUMNS, title="tasks")


@workflow_app.command("new")
def workflow_new(ctx: typer.Context, project_id: int, name: str) -> None:
    _show_workflow(ctx, session(ctx).client().create_workflow(project_id, name))


@workflow_app.command("list")
def workflow_list(ctx: typer.Context, project_id: int) -> None:
    c = session(ctx).client()
    workflows = pages(lambda t: c.list_workflows(project_id, page_token=t), "workflows")
    session(ctx).out.many(workflows, WORKFLOW_COLUMNS, title="workflows")


@workflow_app.command("show")
def workflow_show(ctx: typer.Context, project_id: int, workflow_id: int) -> None:
    _show_workflow(ctx, session(ctx).client().get_workflow(project_id, workflow_id))


@workflow_app.command("edit")
def workflow_edit(
    ctx: typer.Context,
    project_id: int,
    workflow_id: int,
    new_name: Annotated[str | None, typer.Option()] = None,
    reorder: Annotated[
        str | None, typer.Option(help="comma-separated workflow-task ids, in the new order")
    ] = None,
) -> None:
    ids: list[int] = []
    if reorder:
        try:
            ids = [int(x) for x in reorder.split(",")]
        except ValueError:
            raise typer.BadParameter("comma-separated integers", param_hint="--reorder") from None
    workflow = (
        session(ctx)
        .client()
        .update_workflow(project_id, workflow_id, name=new_name, reordered_workflow_task_ids=ids)
    )
    _show_workflow(ctx, workflow)


@workflow_app.command("delete")
def workflow_delete(ctx: typer.Context, project_id: int, workflow_id: int) -> None:
    session(ctx).client().delete_workflow(project_id, workflow_id)
    session(ctx).out.done(
        f"workflow {workflow_id} deleted",
        {"deleted": {"project_id": project_id, "workflow_id": workflow_id}},
    )


@workflow_app.command("add-task")
def workflow_add_task(
    ctx: typer.Context,
    project_id: int,
    workflow_id: int,
    task_id: Annotated[int, typer.Option()],
    order: Annotated[int | None, typer.Option(help="position (default: the end)")] = None,
    args_non_parallel: Json = None,
    args_parallel: Json = None,
    meta_non_parallel: Json = None,
    meta_parallel: Json = None,
    input_filters: Json = None,
) -> None:
    """Append (or insert at --order) a task to the workflow."""
    wftask = (
        session(ctx)
        .client()
        .create_workflow_task(
            project_id,
            workflow_id,
            task_id,
            order=order,
            args_non_parallel=json_object(args_non_parallel, "--args-non-parallel"),
            args_parallel=json_object(args_parallel, "--args-parallel"),
            meta_non_parallel=json_object(meta_non_parallel, "--meta-non-parallel"),
            meta_parallel=json_object(meta_parallel, "--meta-parallel"),
            input_filters=json_object(input_filters, "--input-filters"),
        )
    )
    session(ctx).out.one(wftask, WFTASK_COLUMNS, title=f"workflow task {wftask.id}")


@workflow_app.command("show-task")
def workflow_show_task(
    ctx: typer.Context, project_id: int, workflow_id: int, workflow_task_id: int
) -> None:
    wftask = session(ctx).client().get_workflow_task(project_id, workflow_id, workflow_task_id)
    session(ctx).out.one(wftask, WFTASK_COLUMNS, title=f"workflow task {wftask.id}")


@workflow_app.command("edit-task")
def workflow_edit_task(
    ctx: typer.Context,
    project_id: int,
    workflow_id: int,
    workflow_task_id: int,
    args_non_parallel: Json = None,
    args_parallel: Json = None,
    meta_non_parallel: Json = None,
    meta_parallel: Json = None,
    input_filters: Json = None,
) -> None:
    """Replace the given args, meta or input filters of a workflow task."""
    wftask = (
        session(ctx)
        .client()
        .update_workflow_task(
            project_id,
            workflow_id,
            workflow_task_id,
            args_non_parallel=json_object(args_non_parallel, "--args-non-parallel"),
            args_parallel=json_object(args_parallel, "--args-parallel"),
            meta_non_parallel=json_object(meta_non_parallel, "--meta-non-parallel"),
            meta_parallel=json_object(meta_parallel, "--meta-parallel"),
            input_filters=json_object(input_filters, "--input-filters"),
        )
    )
    session(ctx).out.one(wftask, WFTASK_COLUMNS, title=f"workflow task {wftask.id}")


@workflow_app.command("rm-task")
def workflow_rm_task(
    ctx: typer.Context, project_id: int, workflow_id: int, workflow_task_id: int
) -> None:
    session(ctx).client().delete_workflow_task(project_id, workflow_id, workflow_task_id)
    session(ctx).out.done(
        f"workflow task {workflow_task_id} removed",
        {"deleted": {"workflow_task_id": workflow_task_id}},
    )


@workflow_app.command("export")
def workflow_export(
    ctx: typer.Context,
    project_id: int,
    workflow_id: int,
    json_file: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """The workflow as JSON (name, and per task its source, args, meta, input filters)."""
    exported = session(ctx).client().export_workflow(project_id, workflow_id)
    text = json.dumps(to_dict(exported), indent=2, sort_keys=True)
    if json_file is None:
        print(text)
        return
    json_file.write_text(text + "\n")
    session(ctx).out.done(
        f"workflow {workflow_id} written to {json_file}", {"path": str(json_file)}
    )


@workflow_app.command("import")
def workflow_import(
    ctx: typer.Context,
    project_id: int,
    json_file: Annotated[Path, typer.Option(help="a file written by `workflow export`")],
    workflow_name: Annotated[str | None, typer.Option(help="instead of the file's name")] = None,
) -> None:
    """Create a workflow from an export; each task is found by its source."""
    try:
        data = json.loads(json_file.read_text())
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {json_file}: {exc.strerror}", param_hint="--json-file"
        ) from None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc.msg})", param_hint="--json-file") from None
    exported = workflow_service_pb2.WorkflowExport()
    try:
        json_format.ParseDict(data, exported)
    except json_format.ParseError as exc:
        raise typer.BadParameter(
            f"not a workflow export: {exc}", param_hint="--json-file"
        ) from None
    if workflow_name is not None:
        exported.name = workflow_name
    _show_workflow(ctx, session(ctx).client().import_workflow(project_id, exported))
