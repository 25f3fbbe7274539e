"""ProjectService and DatasetService."""

from __future__ import annotations

from typing import Any

import grpc.aio

from fractal.v2 import dataset_service_pb2 as dpb
from fractal.v2 import dataset_service_pb2_grpc as drpc
from fractal.v2 import project_pb2
from fractal.v2 import project_service_pb2 as pb
from fractal.v2 import project_service_pb2_grpc as rpc
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.models import Dataset, Job
from fractal_api.servicers import transfer
from fractal_api.store import datasets, images, projects, requests
from fractal_api.views import dataset_view, project_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import timestamp
from fractal_grpc.data import rules
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import Violations
from fractal_grpc.pagination import decode_token, page_size, split_page


class ProjectServicer(rpc.ProjectServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        name = validation.name(request.name, "name", violations)
        violations.raise_if_any()
        async with transaction(self.ctx.sessions) as session:
            project = await requests.once(
                session,
                user_id,
                request,
                create=lambda: projects.create(session, name, user_id),
                replay=lambda earlier: projects.get_checked(session, earlier, user_id),
            )
        return pb.CreateProjectResponse(project=project_view(project))

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            project = await projects.get_checked(
                session, request.project_id, current_user().user_id or 0
            )
        return pb.GetProjectResponse(project=project_view(project))

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        state = decode_token(request.page_token, "projects", ("after",)) or {"after": 0}
        rows = await projects.list_for_user(
            self.ctx.raw, current_user().user_id or 0, after_id=state["after"], limit=size + 1
        )
        page, token = split_page(rows, size, "projects", lambda r: {"after": r["id"]})
        return pb.ListProjectsResponse(
            projects=[
                project_pb2.Project(
                    id=r["id"], name=r["name"], create_time=timestamp(r["created_at"])
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def UpdateProject(
        self, request: pb.UpdateProjectRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        rules.mask_paths(request.update_mask.paths)  # "name" is the only path the proto allows
        violations = Violations()
        name = validation.name(request.project.name, "project.name", violations)
        violations.raise_if_any()
        async with transaction(self.ctx.sessions) as session:
            project = await projects.get_checked(session, request.project_id, user_id)
            project = await projects.rename(session, project, name)
        return pb.UpdateProjectResponse(project=project_view(project))

    async def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            await projects.get_checked(session, request.project_id, user_id)
            await projects.lock(session, request.project_id)
            running = await projects.submitted_jobs(session, Job.project_id == request.project_id)
            if refusal := rules.delete_refusal("project", running):
                raise refusal
            await projects.delete(session, request.project_id)
        return pb.DeleteProjectResponse()


class DatasetServicer(drpc.DatasetServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateDataset(
        self, request: dpb.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        name = validation.name(request.name, "name", violations)
        zarr_dir = validation.url(request.zarr_dir, "zarr_dir", violations)
        filters = validation.filters(request.filters, "filters", violations)
        async with transaction(self.ctx.sessions) as session:
            await projects.get_checked(session, request.project_id, user_id)
            violations.raise_if_any()
            dataset = await requests.once(
                session,
                user_id,
                request,
                create=lambda: datasets.create(
                    session,
                    project_id=request.project_id,
                    name=name,
                    zarr_dir=zarr_dir,
                    filters=filters,
                ),
                replay=lambda earlier: projects.dataset_checked(
                    session, request.project_id, earlier, user_id
                ),
            )
        return dpb.CreateDatasetResponse(dataset=dataset_view(dataset))

    async def GetDataset(
        self, request: dpb.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            dataset = await projects.dataset_checked(
                session, request.project_id, request.dataset_id, current_user().user_id or 0
            )
        return dpb.GetDatasetResponse(dataset=dataset_view(dataset))

    async def ListDatasets(
        self, request: dpb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        query = f"datasets:{request.project_id}"
        state = decode_token(request.page_token, query, ("after",)) or {"after": 0}
        user_id = current_user().user_id or 0
        async with self.ctx.reads() as session:
            rows: list[Dataset]
            if request.project_id == 0:  # across the caller's projects
                rows = list(
                    await datasets.list_page_for_user(
                        session, user_id, after_id=state["after"], limit=size + 1
                    )
                )
            else:
                await projects.get_checked(session, request.project_id, user_id)
                rows = list(
                    await datasets.list_page(
                        session, request.project_id, after_id=state["after"], limit=size + 1
                    )
                )
        page, token = split_page(rows, size, query, lambda d: {"after": d.id})
        return dpb.ListDatasetsResponse(
            datasets=[dataset_view(d, include_history=request.include_history) for d in page],
            next_page_token=token,
        )

    async def UpdateDataset(
        self, request: dpb.UpdateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        paths = rules.mask_paths(request.update_mask.paths)
        violations = Violations()
        fields: dict[str, Any] = {}
        if "name" in paths:
            fields["name"] = validation.name(request.dataset.name, "dataset.name", violations)
        if "zarr_dir" in paths:
            fields["zarr_dir"] = validation.url(
                request.dataset.zarr_dir, "dataset.zarr_dir", violations
            )
        if "filters" in paths:
            fields["filters"] = validation.filters(
                request.dataset.filters, "dataset.filters", violations
            )
        violations.raise_if_any()
        async with transaction(self.ctx.sessions) as session:
            await projects.dataset_checked(session, request.project_id, request.dataset_id, user_id)
            # Under the row lock, as image writers: image_count cannot change under the check.
            dataset = await images.lock_dataset(session, request.dataset_id)
            assert dataset is not None
            if "zarr_dir" in fields:
                refusal = rules.zarr_dir_refusal(
                    dataset.zarr_dir, fields["zarr_dir"], dataset.image_count
                )
                if refusal:
                    raise refusal
            dataset = await datasets.update(session, dataset, fields)
        return dpb.UpdateDatasetResponse(dataset=dataset_view(dataset))

    async def DeleteDataset(
        self, request: dpb.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        async with transaction(self.ctx.sessions) as session:
            await projects.dataset_checked(session, request.project_id, request.dataset_id, user_id)
            # Locked: a job submitted meanwhile (its insert key-share-locks the dataset row
            # through the foreign key) is either seen here or fails on the deleted row.
            await images.lock_dataset(session, request.dataset_id)
            running = await projects.submitted_jobs(session, Job.dataset_id == request.dataset_id)
            if refusal := rules.delete_refusal("dataset", running):
                raise refusal
            await datasets.delete(session, request.dataset_id)
        return dpb.DeleteDatasetResponse()

    async def ExportDataset(
        self, request: dpb.ExportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async for message in transfer.export(self.ctx, request, current_user().user_id or 0):
            yield message

    async def ImportDataset(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        return await transfer.import_(self.ctx, request_iterator, current_user().user_id or 0)
