"""WorkflowService (reference §3.2 "Workflows", "Workflow tasks")."""

from __future__ import annotations

from typing import Any

import grpc.aio

import fractal_grpc.workflows as rules
from fractal.v2 import workflow_service_pb2 as pb
from fractal.v2 import workflow_service_pb2_grpc as rpc
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.models import Task, Workflow, WorkflowTask
from fractal_api.store import projects, requests, tasks, workflows
from fractal_api.views import workflow_task_view, workflow_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import struct_to_dict
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import Violations
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.pagination import decode_token, page_size, split_page


class WorkflowServicer(rpc.WorkflowServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        name = validation.name(request.name, "name", violations)
        async with transaction(self.ctx.sessions) as session:
            await projects.get_checked(session, request.project_id, user_id)
            violations.raise_if_any()
            workflow = await requests.once(
                session,
                user_id,
                request,
                create=lambda: workflows.create(session, request.project_id, name),
                replay=lambda earlier: projects.workflow_checked(
                    session, request.project_id, earlier, user_id
                ),
            )
            listing = await workflows.task_list(session, [workflow.id])
        return pb.CreateWorkflowResponse(workflow=workflow_view(workflow, listing[workflow.id]))

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, current_user().user_id or 0
            )
            listing = await workflows.task_list(session, [workflow.id])
        return pb.GetWorkflowResponse(workflow=workflow_view(workflow, listing[workflow.id]))

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        query = f"workflows:{request.project_id}"
        state = decode_token(request.page_token, query, ("after",)) or {"after": 0}
        async with self.ctx.reads() as session:
            await projects.get_checked(session, request.project_id, current_user().user_id or 0)
            rows: list[Workflow] = list(
                await workflows.list_page(
                    session, request.project_id, after_id=state["after"], limit=size + 1
                )
            )
            page, token = split_page(rows, size, query, lambda w: {"after": w.id})
            listing = await workflows.task_list(session, [w.id for w in page])
        return pb.ListWorkflowsResponse(
            workflows=[workflow_view(w, listing[w.id]) for w in page],
            next_page_token=token,
        )

    async def CreateWorkflowTask(
        self, request: pb.CreateWorkflowTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        given: dict[str, dict[str, Any] | None] = {}
        for field in ("args_non_parallel", "args_parallel", "meta_non_parallel", "meta_parallel"):
            value = struct_to_dict(getattr(request, field), request.HasField(field))
            if value is not None:
                try:
                    value = validate_keys(value, field)
                except ValueError as exc:
                    violations.add(field, str(exc))
            given[field] = value
        for field, why in rules.reserved_key_violations(given):
            violations.add(field, why)
        input_filters = validation.filters(request.input_filters, "input_filters", violations)
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )

            async def create() -> tuple[WorkflowTask, Task]:
                task = await tasks.get(session, request.task_id)
                for field, why in rules.wftask_type_violations(task.type, given):
                    violations.add(field, why)
                violations.raise_if_any()
                stored = rules.initial_wftask_fields(
                    task.meta_non_parallel, task.meta_parallel, given
                )
                wftask = WorkflowTask(
                    task_id=task.id, task_type=task.type, input_filters=input_filters, **stored
                )
                order = request.order if request.HasField("order") else None
                return await workflows.insert_task(session, workflow, wftask, order), task

            wftask, task = await requests.once(
                session,
                user_id,
                request,
                create=create,
                replay=lambda earlier: workflows.workflow_task(session, workflow.id, earlier),
                resource_id=lambda created: created[0].id,
            )
        return pb.CreateWorkflowTaskResponse(workflow_task=workflow_task_view(wftask, task))
