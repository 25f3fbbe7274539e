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
from fractal_api.store import jobs, projects, requests, tasks, workflows
from fractal_api.views import (
    TASK_STATES,
    workflow_export_view,
    workflow_task_view,
    workflow_view,
    workflow_views,
)
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import struct_to_dict
from fractal_grpc.data.rules import rename_needed
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import FailedPrecondition, Violations
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.pagination import decode_token, page_size, split_page
from fractal_grpc.workflows.status import workflow_status

WFTASK_STRUCTS = ("args_non_parallel", "args_parallel", "meta_non_parallel", "meta_parallel")


def _given_structs(request: Any, violations: Violations) -> dict[str, dict[str, Any] | None]:
    """The args/meta a request sets (None for a field it leaves unset), keys checked."""
    given: dict[str, dict[str, Any] | None] = {}
    for field in WFTASK_STRUCTS:
        value = struct_to_dict(getattr(request, field), request.HasField(field))
        if value is not None:
            try:
                value = validate_keys(value, field)
            except ValueError as exc:
                violations.add(field, str(exc))
        given[field] = value
    return given


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
        user_id = current_user().user_id or 0
        # project_id 0: across the caller's projects.
        rows = await workflows.list_page(
            self.ctx.raw, user_id, request.project_id, after_id=state["after"], limit=size + 1
        )
        if not rows and request.project_id:
            # A page with rows came through the caller's membership; an empty one may be a
            # project that is not theirs, which answers NOT_FOUND.
            async with self.ctx.reads() as session:
                await projects.get_checked(session, request.project_id, user_id)
        page, token = split_page(rows, size, query, lambda w: {"after": w["id"]})
        listing = await workflows.task_lists(
            self.ctx.raw, [w["id"] for w in page], with_schemas=request.include_args_schemas
        )
        return pb.ListWorkflowsResponse(
            workflows=workflow_views(page, listing, with_schemas=request.include_args_schemas),
            next_page_token=token,
        )

    async def GetWorkflowStatus(
        self, request: pb.GetWorkflowStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with self.ctx.reads() as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )
            dataset = await projects.dataset_checked(
                session, request.project_id, request.dataset_id, user_id
            )
            listing = (await workflows.task_list(session, [workflow.id]))[workflow.id]
            running = await jobs.submitted_for(session, dataset.id, workflow.id)
        if len(running) > 1:
            raise FailedPrecondition(
                f"Dataset {dataset.id} and workflow {workflow.id} have {len(running)} "
                f"submitted jobs: {', '.join(str(j.id) for j in running)}",
                reason="SEVERAL_SUBMITTED_JOBS",
            )
        job = running[0] if running else None
        statuses = workflow_status(
            [wftask.id for wftask, _ in listing],
            [
                (item["workflowtask"]["id"], item["status"])
                for item in dataset.history
                if isinstance(item.get("workflowtask"), dict) and "id" in item["workflowtask"]
            ],
            None
            if job is None
            else [(e["workflow_task_id"], e["state"]) for e in job.task_statuses],
        )
        return pb.GetWorkflowStatusResponse(
            statuses=[
                pb.WorkflowTaskStatus(
                    workflow_task_id=s.workflow_task_id, order=s.order, state=TASK_STATES[s.state]
                )
                for s in statuses
            ],
            running_job_id=job.id if job is not None else 0,
        )

    async def CreateWorkflowTask(
        self, request: pb.CreateWorkflowTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        given = _given_structs(request, violations)
        for field, why in rules.reserved_key_violations(given):
            violations.add(field, why)
        input_filters = validation.filters(request.input_filters, "input_filters", violations)
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )

            async def create() -> tuple[WorkflowTask, Task]:
                task = await tasks.get(session, request.task_id, lock="share")
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

    async def UpdateWorkflow(
        self, request: pb.UpdateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        name = (
            validation.name(request.name, "name", violations) if request.HasField("name") else None
        )
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )
            violations.raise_if_any()
            await workflows.lock(session, workflow.id)
            listing = (await workflows.task_list(session, [workflow.id]))[workflow.id]
            if request.reordered_workflow_task_ids:
                given = list(request.reordered_workflow_task_ids)
                current = [wftask.id for wftask, _ in listing]
                for field, why in rules.permutation_violations(current, given):
                    violations.add(field, why)
                violations.raise_if_any()
                workflows.reorder(listing, given)
                await session.flush()
            if name is not None and rename_needed(workflow.name, name):
                await workflows.rename(session, workflow, name)
            listing = (await workflows.task_list(session, [workflow.id]))[workflow.id]
        return pb.UpdateWorkflowResponse(workflow=workflow_view(workflow, listing))

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )
            await workflows.lock(session, workflow.id)
            running = await workflows.submitted_jobs(session, workflow.id)
            if running:
                raise FailedPrecondition(
                    f"Cannot delete workflow {workflow.id}: it is used by submitted job(s) "
                    f"{', '.join(map(str, running))}.",
                    reason="WORKFLOW_IN_USE",
                    metadata={"job_ids": ",".join(map(str, running))},
                )
            await workflows.delete_workflow(session, workflow.id)
        return pb.DeleteWorkflowResponse()

    async def GetWorkflowTask(
        self, request: pb.GetWorkflowTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, current_user().user_id or 0
            )
            wftask, task = await workflows.workflow_task(
                session, workflow.id, request.workflow_task_id
            )
        return pb.GetWorkflowTaskResponse(workflow_task=workflow_task_view(wftask, task))

    async def UpdateWorkflowTask(
        self, request: pb.UpdateWorkflowTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        given = _given_structs(request, violations)
        for field, why in rules.reserved_key_violations(given):
            violations.add(field, why)
        input_filters = (
            validation.filters(request.input_filters, "input_filters", violations)
            if request.HasField("input_filters")
            else None
        )
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )
            wftask, task = await workflows.workflow_task(
                session, workflow.id, request.workflow_task_id
            )
            for field, why in rules.wftask_type_violations(wftask.task_type, given):
                violations.add(field, why)
            violations.raise_if_any()
            for field, value in rules.updated_wftask_fields(given).items():
                setattr(wftask, field, value)
            if input_filters is not None:
                wftask.input_filters = input_filters
            await session.flush()
        return pb.UpdateWorkflowTaskResponse(workflow_task=workflow_task_view(wftask, task))

    async def DeleteWorkflowTask(
        self, request: pb.DeleteWorkflowTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, user_id
            )
            await workflows.lock(session, workflow.id)
            wftask, _ = await workflows.workflow_task(
                session, workflow.id, request.workflow_task_id
            )
            await workflows.delete_task(session, wftask)
        return pb.DeleteWorkflowTaskResponse()

    async def ExportWorkflow(
        self, request: pb.ExportWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            workflow = await projects.workflow_checked(
                session, request.project_id, request.workflow_id, current_user().user_id or 0
            )
            listing = (await workflows.task_list(session, [workflow.id]))[workflow.id]
        return pb.ExportWorkflowResponse(workflow=workflow_export_view(workflow, listing))

    async def ImportWorkflow(
        self, request: pb.ImportWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        name = validation.name(request.workflow.name, "workflow.name", violations)
        items = []
        for index, item in enumerate(request.workflow.task_list):
            prefix = f"workflow.task_list[{index}]"
            item_violations = Violations()
            given = _given_structs(item, item_violations)
            for field, why in rules.reserved_key_violations(given):
                item_violations.add(field, why)
            filters = validation.filters(item.input_filters, "input_filters", item_violations)
            for field, why in item_violations.items:
                violations.add(f"{prefix}.{field}", why)
            items.append((item.task_source, given, filters))
        async with transaction(self.ctx.sessions) as session:
            await projects.get_checked(session, request.project_id, user_id)
            violations.raise_if_any()

            async def create() -> Workflow:
                found = await tasks.by_sources(session, [source for source, _, _ in items])
                for field, why in rules.source_violations(
                    [source for source, _, _ in items], [(t.source, t.id) for t in found]
                ):
                    violations.add(field, why)
                violations.raise_if_any()
                by_source = {t.source: t for t in found}
                for index, (source, given, _) in enumerate(items):
                    for field, why in rules.wftask_type_violations(by_source[source].type, given):
                        violations.add(f"workflow.task_list[{index}].{field}", why)
                violations.raise_if_any()
                workflow = await workflows.create(session, request.project_id, name)
                for source, given, filters in items:
                    task = by_source[source]
                    stored = rules.initial_wftask_fields(
                        task.meta_non_parallel, task.meta_parallel, given
                    )
                    await workflows.insert_task(
                        session,
                        workflow,
                        WorkflowTask(
                            task_id=task.id, task_type=task.type, input_filters=filters, **stored
                        ),
                        None,
                    )
                return workflow

            workflow = await requests.once(
                session,
                user_id,
                request,
                create=create,
                replay=lambda earlier: projects.workflow_checked(
                    session, request.project_id, earlier, user_id
                ),
            )
            listing = (await workflows.task_list(session, [workflow.id]))[workflow.id]
        return pb.ImportWorkflowResponse(workflow=workflow_view(workflow, listing))
