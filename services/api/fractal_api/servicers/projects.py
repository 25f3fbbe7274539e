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
from fractal_api.models import Dataset
from fractal_api.store import datasets, projects, requests
from fractal_api.views import dataset_view, project_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import timestamp
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
        async with self.ctx.reads() as session:
            await projects.get_checked(session, request.project_id, current_user().user_id or 0)
            rows: list[Dataset] = list(
                await datasets.list_page(
                    session, request.project_id, after_id=state["after"], limit=size + 1
                )
            )
        page, token = split_page(rows, size, query, lambda d: {"after": d.id})
        return dpb.ListDatasetsResponse(
            datasets=[dataset_view(d, include_history=request.include_history) for d in page],
            next_page_token=token,
        )
