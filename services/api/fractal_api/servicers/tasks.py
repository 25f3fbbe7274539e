"""TaskService: custom tasks and the catalogue (reference §3.2 "Tasks (V2)", §8.4)."""

from __future__ import annotations

from typing import Any

import grpc.aio
import jsonschema

import fractal_grpc.workflows as rules
from fractal.v2 import task_service_pb2 as pb
from fractal.v2 import task_service_pb2_grpc as rpc
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.models import Task
from fractal_api.store import requests, tasks, workflows
from fractal_api.views import task_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import struct_to_dict
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import FailedPrecondition, PermissionDenied, Violations
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.pagination import decode_token, encode_token, page_size


def _schema(request: Any, field: str, violations: Violations) -> dict[str, Any] | None:
    schema = struct_to_dict(getattr(request, field), request.HasField(field))
    if schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            violations.add(field, f"not a valid JSON Schema: {exc.message}")
    return schema


def _check_owner(task: Task) -> None:
    me = current_user()
    if not rules.may_edit_task(task.owner, me.username or me.slurm_user, me.is_superuser):
        raise PermissionDenied(
            "Only a superuser can modify a task without owner."
            if task.owner is None
            else f"Current user is not the owner of task {task.id}.",
            reason="NOT_TASK_OWNER",
        )


class TaskServicer(rpc.TaskServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        me = current_user()
        violations = Violations()
        name = validation.name(request.name, "name", violations)
        source = validation.name(request.source, "source", violations)
        commands: dict[str, str | None] = {}
        for field in ("command_non_parallel", "command_parallel"):
            value = getattr(request, field) if request.HasField(field) else None
            problem = rules.command_violation(field, value) if value is not None else None
            if problem:
                violations.add(*problem)
            commands[field] = value.strip() if value else None
        if not commands["command_non_parallel"] and not commands["command_parallel"]:
            violations.add("command_parallel", "a task needs at least one command")
        kind = rules.task_type(commands["command_non_parallel"], commands["command_parallel"])
        meta_np = struct_to_dict(request.meta_non_parallel) or {}
        meta_p = struct_to_dict(request.meta_parallel) or {}
        schema_np = _schema(request, "args_schema_non_parallel", violations)
        schema_p = _schema(request, "args_schema_parallel", violations)
        present = {
            "args_schema_non_parallel": schema_np is not None,
            "args_schema_parallel": schema_p is not None,
            "meta_non_parallel": bool(meta_np),
            "meta_parallel": bool(meta_p),
        }
        for field, why in rules.task_field_violations(kind, [f for f, on in present.items() if on]):
            violations.add(field, why)
        types: dict[str, dict[str, bool]] = {}
        for field in ("input_types", "output_types"):
            try:
                types[field] = validate_keys(dict(getattr(request, field)), field)
            except ValueError as exc:
                violations.add(field, str(exc))
        violations.raise_if_any()
        owner = me.username or me.slurm_user
        if not owner:
            raise FailedPrecondition(
                "Cannot add a new task because current user does not have `username` or "
                "`slurm_user` attributes.",
                reason="TASK_OWNER_UNKNOWN",
            )
        user_id = me.user_id or 0
        async with transaction(self.ctx.sessions) as session:
            task = await requests.once(
                session,
                user_id,
                request,
                create=lambda: tasks.create(
                    session,
                    name=name,
                    type=kind,
                    source=f"{owner}:{source}",
                    owner=owner,
                    version=request.version if request.HasField("version") else None,
                    command_non_parallel=commands["command_non_parallel"],
                    command_parallel=commands["command_parallel"],
                    meta_non_parallel=meta_np,
                    meta_parallel=meta_p,
                    args_schema_non_parallel=schema_np,
                    args_schema_parallel=schema_p,
                    args_schema_version=request.args_schema_version
                    if request.HasField("args_schema_version")
                    else None,
                    docs_info=request.docs_info if request.HasField("docs_info") else None,
                    docs_link=request.docs_link if request.HasField("docs_link") else None,
                    input_types=types["input_types"],
                    output_types=types["output_types"],
                ),
                replay=lambda earlier: tasks.get(session, earlier),
            )
        return pb.CreateTaskResponse(task=task_view(task))

    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.ctx.reads() as session:
            task = await tasks.get(session, request.task_id)
        return pb.GetTaskResponse(task=task_view(task))

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        state = decode_token(request.page_token, "tasks", ("after",)) or {"after": 0}
        rows = await tasks.list_page(
            self.ctx.raw,
            after_id=state["after"],
            limit=size + 1,
            schema_parallel=request.args_schema_parallel,
            schema_non_parallel=request.args_schema_non_parallel,
        )
        token = encode_token("tasks", after=rows[size - 1]["id"]) if len(rows) > size else ""
        return pb.ListTasksResponse(
            tasks=[
                task_view(
                    t,
                    with_schema_parallel=request.args_schema_parallel,
                    with_schema_non_parallel=request.args_schema_non_parallel,
                )
                for t in rows[:size]
            ],
            next_page_token=token,
        )

    async def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        violations = Violations()
        changes: dict[str, Any] = {}
        if request.HasField("name"):
            changes["name"] = validation.name(request.name, "name", violations)
        if request.HasField("version"):
            changes["version"] = request.version
        for field in ("command_non_parallel", "command_parallel"):
            if request.HasField(field):
                problem = rules.command_violation(field, getattr(request, field))
                if problem:
                    violations.add(*problem)
                changes[field] = getattr(request, field).strip()
        for types in ("input_types", "output_types"):
            if request.HasField(types):
                try:
                    changes[types] = validate_keys(dict(getattr(request, types).types), types)
                except ValueError as exc:
                    violations.add(types, str(exc))
        async with transaction(self.ctx.sessions) as session:
            task = await tasks.get(session, request.task_id, lock="update")
            _check_owner(task)
            # The type is not recomputed: a command of the other side is refused.
            for field, why in rules.task_field_violations(task.type, changes):
                violations.add(field, why)
            violations.raise_if_any()
            for field, value in changes.items():
                setattr(task, field, value)
            await session.flush()
        return pb.UpdateTaskResponse(task=task_view(task))

    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            # The row lock waits out (and then blocks) a workflow-task insert that uses the task.
            task = await tasks.get(session, request.task_id, lock="update")
            _check_owner(task)
            used = await workflows.users_of_task(session, task.id, user_id)
            if used:
                mine = [(p, w, name) for p, w, name, member in used if member]
                raise FailedPrecondition(
                    rules.task_in_use_message(task.id, mine, len(used) - len(mine)),
                    reason="TASK_IN_USE",
                    metadata={"workflow_ids": ",".join(str(w) for _, w, _ in mine)},
                )
            await tasks.delete_task(session, task.id)
        return pb.DeleteTaskResponse()
