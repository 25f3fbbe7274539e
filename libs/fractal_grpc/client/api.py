"""``Client``: the public API of fractal-grpc as typed async methods, one per RPC.

The plumbing (channel, deadlines, token refresh, errors) is ``BaseClient`` (``base.py``); the
superusers' AdminService methods are in ``admin.py``, TaskCollectionService's in
``task_collections.py``, and the other services' here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from fractal.v2 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    image_pb2,
    image_service_pb2,
    image_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from fractal_grpc.client.admin import AdminMethods
from fractal_grpc.client.base import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT,
    REFRESH_MARGIN_SECONDS,
    TRANSFER_TIMEOUT,
    WATCH_RESUME_SECONDS,
    WATCH_TIMEOUT,
    BaseClient,
    Credential,
    FiltersLike,
    ImageLike,
    StructLike,
    _filters,
    _images,
    _mask,
    _struct,
    new_request_id,
)
from fractal_grpc.client.errors import from_rpc_error
from fractal_grpc.client.task_collections import CollectionMethods
from fractal_grpc.convert import fill_image

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TIMEOUT",
    "REFRESH_MARGIN_SECONDS",
    "TRANSFER_TIMEOUT",
    "WATCH_RESUME_SECONDS",
    "WATCH_TIMEOUT",
    "BaseClient",
    "Client",
    "Credential",
    "merge_job",
    "new_request_id",
]


class Client(AdminMethods, CollectionMethods, BaseClient):
    """The public API of one api server, as the user with ``token`` (or ``credential``)."""

    # -- stubs ----------------------------------------------------------------------------------

    @property
    def _auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def _users(self) -> user_service_pb2_grpc.UserServiceStub:
        return user_service_pb2_grpc.UserServiceStub(self.channel)

    @property
    def _projects(self) -> project_service_pb2_grpc.ProjectServiceStub:
        return project_service_pb2_grpc.ProjectServiceStub(self.channel)

    @property
    def _datasets(self) -> dataset_service_pb2_grpc.DatasetServiceStub:
        return dataset_service_pb2_grpc.DatasetServiceStub(self.channel)

    @property
    def _images(self) -> image_service_pb2_grpc.ImageServiceStub:
        return image_service_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def _tasks(self) -> task_service_pb2_grpc.TaskServiceStub:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

    @property
    def _workflows(self) -> workflow_service_pb2_grpc.WorkflowServiceStub:
        return workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)

    @property
    def _jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.channel)

    # -- AuthService ----------------------------------------------------------------------------

    async def get_current_user(self, *, timeout: float | None = None) -> user_pb2.User:
        resp = await self._unary(
            self._auth.GetCurrentUser,
            "/fractal.v2.AuthService/GetCurrentUser",
            auth_service_pb2.GetCurrentUserRequest(),
            timeout,
        )
        return resp.user

    async def update_current_user(
        self,
        *,
        cache_dir: str | None = None,
        slurm_accounts: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User:
        """Change the caller's own cache_dir and/or slurm_accounts (only those given)."""
        user = user_pb2.User()
        paths: list[str] = []
        if cache_dir is not None:
            user.cache_dir = cache_dir
            paths.append("cache_dir")
        if slurm_accounts is not None:
            user.slurm_accounts.extend(slurm_accounts)
            paths.append("slurm_accounts")
        resp = await self._unary(
            self._auth.UpdateCurrentUser,
            "/fractal.v2.AuthService/UpdateCurrentUser",
            auth_service_pb2.UpdateCurrentUserRequest(user=user, update_mask=_mask(*paths)),
            timeout,
        )
        return resp.user

    # -- UserService (superusers) ---------------------------------------------------------------

    async def create_user(
        self,
        email: str,
        password: str,
        *,
        username: str | None = None,
        slurm_user: str | None = None,
        cache_dir: str | None = None,
        slurm_accounts: Sequence[str] = (),
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User:
        req = user_service_pb2.CreateUserRequest(
            email=email,
            password=password,
            slurm_accounts=list(slurm_accounts),
            request_id=request_id or new_request_id(),
        )
        if username is not None:
            req.username = username
        if slurm_user is not None:
            req.slurm_user = slurm_user
        if cache_dir is not None:
            req.cache_dir = cache_dir
        resp = await self._unary(
            self._users.CreateUser, "/fractal.v2.UserService/CreateUser", req, timeout
        )
        return resp.user

    async def get_user(self, user_id: int, *, timeout: float | None = None) -> user_pb2.User:
        resp = await self._unary(
            self._users.GetUser,
            "/fractal.v2.UserService/GetUser",
            user_service_pb2.GetUserRequest(user_id=user_id),
            timeout,
        )
        return resp.user

    async def list_users(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> user_service_pb2.ListUsersResponse:
        return await self._unary(
            self._users.ListUsers,
            "/fractal.v2.UserService/ListUsers",
            user_service_pb2.ListUsersRequest(page_size=page_size, page_token=page_token),
            timeout,
        )

    async def update_user(
        self,
        user_id: int,
        *,
        email: str | None = None,
        password: str | None = None,
        is_active: bool | None = None,
        is_superuser: bool | None = None,
        is_verified: bool | None = None,
        username: str | None = None,
        slurm_user: str | None = None,
        cache_dir: str | None = None,
        slurm_accounts: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User:
        """Change the fields given (and only those)."""
        user = user_pb2.User()
        paths: list[str] = []
        for name, value in (
            ("email", email),
            ("is_active", is_active),
            ("is_superuser", is_superuser),
            ("is_verified", is_verified),
            ("username", username),
            ("slurm_user", slurm_user),
            ("cache_dir", cache_dir),
        ):
            if value is not None:
                setattr(user, name, value)
                paths.append(name)
        if slurm_accounts is not None:
            user.slurm_accounts.extend(slurm_accounts)
            paths.append("slurm_accounts")
        req = user_service_pb2.UpdateUserRequest(user_id=user_id, user=user)
        if password is not None:
            req.password = password
            paths.append("password")
        req.update_mask.CopyFrom(_mask(*paths))
        resp = await self._unary(
            self._users.UpdateUser, "/fractal.v2.UserService/UpdateUser", req, timeout
        )
        return resp.user

    # -- ProjectService -------------------------------------------------------------------------

    async def create_project(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> project_pb2.Project:
        resp = await self._unary(
            self._projects.CreateProject,
            "/fractal.v2.ProjectService/CreateProject",
            project_service_pb2.CreateProjectRequest(
                name=name, request_id=request_id or new_request_id()
            ),
            timeout,
        )
        return resp.project

    async def get_project(
        self, project_id: int, *, timeout: float | None = None
    ) -> project_pb2.Project:
        resp = await self._unary(
            self._projects.GetProject,
            "/fractal.v2.ProjectService/GetProject",
            project_service_pb2.GetProjectRequest(project_id=project_id),
            timeout,
        )
        return resp.project

    async def list_projects(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> project_service_pb2.ListProjectsResponse:
        return await self._unary(
            self._projects.ListProjects,
            "/fractal.v2.ProjectService/ListProjects",
            project_service_pb2.ListProjectsRequest(page_size=page_size, page_token=page_token),
            timeout,
        )

    async def update_project(
        self, project_id: int, *, name: str, timeout: float | None = None
    ) -> project_pb2.Project:
        resp = await self._unary(
            self._projects.UpdateProject,
            "/fractal.v2.ProjectService/UpdateProject",
            project_service_pb2.UpdateProjectRequest(
                project_id=project_id,
                project=project_pb2.Project(name=name),
                update_mask=_mask("name"),
            ),
            timeout,
        )
        return resp.project

    async def delete_project(self, project_id: int, *, timeout: float | None = None) -> None:
        await self._unary(
            self._projects.DeleteProject,
            "/fractal.v2.ProjectService/DeleteProject",
            project_service_pb2.DeleteProjectRequest(project_id=project_id),
            timeout,
        )

    # -- DatasetService -------------------------------------------------------------------------

    async def create_dataset(
        self,
        project_id: int,
        name: str,
        zarr_dir: str,
        *,
        filters: FiltersLike | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> project_pb2.Dataset:
        req = dataset_service_pb2.CreateDatasetRequest(
            project_id=project_id,
            name=name,
            zarr_dir=zarr_dir,
            request_id=request_id or new_request_id(),
        )
        _filters(req.filters, filters)
        resp = await self._unary(
            self._datasets.CreateDataset, "/fractal.v2.DatasetService/CreateDataset", req, timeout
        )
        return resp.dataset

    async def get_dataset(
        self, project_id: int, dataset_id: int, *, timeout: float | None = None
    ) -> project_pb2.Dataset:
        resp = await self._unary(
            self._datasets.GetDataset,
            "/fractal.v2.DatasetService/GetDataset",
            dataset_service_pb2.GetDatasetRequest(project_id=project_id, dataset_id=dataset_id),
            timeout,
        )
        return resp.dataset

    async def list_datasets(
        self,
        project_id: int = 0,
        *,
        include_history: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> dataset_service_pb2.ListDatasetsResponse:
        """The datasets of a project (0: of every project of the caller)."""
        return await self._unary(
            self._datasets.ListDatasets,
            "/fractal.v2.DatasetService/ListDatasets",
            dataset_service_pb2.ListDatasetsRequest(
                project_id=project_id,
                include_history=include_history,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout,
        )

    async def update_dataset(
        self,
        project_id: int,
        dataset_id: int,
        *,
        name: str | None = None,
        zarr_dir: str | None = None,
        filters: FiltersLike | None = None,
        timeout: float | None = None,
    ) -> project_pb2.Dataset:
        """Change the fields given; ``filters`` replaces the dataset's filters as a whole."""
        dataset = project_pb2.Dataset()
        paths = []
        if name is not None:
            dataset.name = name
            paths.append("name")
        if zarr_dir is not None:
            dataset.zarr_dir = zarr_dir
            paths.append("zarr_dir")
        if filters is not None:
            _filters(dataset.filters, filters)
            paths.append("filters")
        resp = await self._unary(
            self._datasets.UpdateDataset,
            "/fractal.v2.DatasetService/UpdateDataset",
            dataset_service_pb2.UpdateDatasetRequest(
                project_id=project_id,
                dataset_id=dataset_id,
                dataset=dataset,
                update_mask=_mask(*paths),
            ),
            timeout,
        )
        return resp.dataset

    async def delete_dataset(
        self, project_id: int, dataset_id: int, *, timeout: float | None = None
    ) -> None:
        await self._unary(
            self._datasets.DeleteDataset,
            "/fractal.v2.DatasetService/DeleteDataset",
            dataset_service_pb2.DeleteDatasetRequest(project_id=project_id, dataset_id=dataset_id),
            timeout,
        )

    def export_dataset(
        self, project_id: int, dataset_id: int, *, timeout: float | None = TRANSFER_TIMEOUT
    ) -> AsyncIterator[dataset_service_pb2.ExportDatasetResponse]:
        """The header (first message) and the images in batches, from one snapshot."""
        return self._stream(
            self._datasets.ExportDataset,
            "/fractal.v2.DatasetService/ExportDataset",
            dataset_service_pb2.ExportDatasetRequest(project_id=project_id, dataset_id=dataset_id),
            timeout,
        )

    async def import_dataset(
        self,
        project_id: int,
        name: str,
        zarr_dir: str,
        images: Iterable[ImageLike] = (),
        *,
        filters: FiltersLike | None = None,
        batch_size: int = 10_000,
        request_id: str | None = None,
        timeout: float | None = TRANSFER_TIMEOUT,
    ) -> project_pb2.Dataset:
        """Create a dataset with all its images in one transaction (sent in batches)."""
        header = dataset_service_pb2.ImportDatasetRequest(
            project_id=project_id,
            name=name,
            zarr_dir=zarr_dir,
            request_id=request_id or new_request_id(),
        )
        _filters(header.filters, filters)
        batches: list[dataset_service_pb2.ImportDatasetRequest] = [header]
        pending = _images(images)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            if start == 0:
                header.images.extend(chunk)
            else:
                batches.append(dataset_service_pb2.ImportDatasetRequest(images=chunk))
        await self._ensure_token()
        try:
            resp = await self._datasets.ImportDataset(
                iter(batches), metadata=self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "/fractal.v2.DatasetService/ImportDataset") from None
        return resp.dataset

    # -- ImageService ---------------------------------------------------------------------------

    async def add_images(
        self,
        project_id: int,
        dataset_id: int,
        images: Iterable[ImageLike],
        *,
        timeout: float | None = None,
    ) -> int:
        """Append images to the dataset's list; returns how many were added."""
        resp = await self._unary(
            self._images.AddImages,
            "/fractal.v2.ImageService/AddImages",
            image_service_pb2.AddImagesRequest(
                project_id=project_id, dataset_id=dataset_id, images=_images(images)
            ),
            timeout,
        )
        return int(resp.added_count)

    async def query_images(
        self,
        project_id: int,
        dataset_id: int,
        *,
        filters: FiltersLike | None = None,
        use_dataset_filters: bool = False,
        zarr_url: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> image_service_pb2.QueryImagesResponse:
        req = image_service_pb2.QueryImagesRequest(
            project_id=project_id,
            dataset_id=dataset_id,
            use_dataset_filters=use_dataset_filters,
            page_size=page_size,
            page_token=page_token,
        )
        _filters(req.filters, filters)
        if zarr_url is not None:
            req.zarr_url = zarr_url
        return await self._unary(
            self._images.QueryImages, "/fractal.v2.ImageService/QueryImages", req, timeout
        )

    async def update_image(
        self,
        project_id: int,
        dataset_id: int,
        zarr_url: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        types: Mapping[str, bool] | None = None,
        timeout: float | None = None,
    ) -> image_pb2.Image:
        """Replace the image's attributes and/or types (each wholesale)."""
        image = image_pb2.Image()
        fill_image(image, {"zarr_url": zarr_url, "attributes": attributes, "types": types})
        paths = [p for p, v in (("attributes", attributes), ("types", types)) if v is not None]
        resp = await self._unary(
            self._images.UpdateImage,
            "/fractal.v2.ImageService/UpdateImage",
            image_service_pb2.UpdateImageRequest(
                project_id=project_id, dataset_id=dataset_id, image=image, update_mask=_mask(*paths)
            ),
            timeout,
        )
        return resp.image

    async def delete_images(
        self,
        project_id: int,
        dataset_id: int,
        zarr_urls: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> int:
        resp = await self._unary(
            self._images.DeleteImages,
            "/fractal.v2.ImageService/DeleteImages",
            image_service_pb2.DeleteImagesRequest(
                project_id=project_id, dataset_id=dataset_id, zarr_urls=list(zarr_urls)
            ),
            timeout,
        )
        return int(resp.deleted_count)

    # -- TaskService ----------------------------------------------------------------------------

    async def create_task(
        self,
        name: str,
        source: str,
        *,
        command_non_parallel: str | None = None,
        command_parallel: str | None = None,
        version: str | None = None,
        meta_non_parallel: StructLike | None = None,
        meta_parallel: StructLike | None = None,
        args_schema_non_parallel: StructLike | None = None,
        args_schema_parallel: StructLike | None = None,
        args_schema_version: str | None = None,
        docs_info: str | None = None,
        docs_link: str | None = None,
        input_types: Mapping[str, bool] | None = None,
        output_types: Mapping[str, bool] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> task_pb2.Task:
        req = task_service_pb2.CreateTaskRequest(
            name=name,
            source=source,
            input_types=dict(input_types or {}),
            output_types=dict(output_types or {}),
            request_id=request_id or new_request_id(),
        )
        for field_name, value in (
            ("command_non_parallel", command_non_parallel),
            ("command_parallel", command_parallel),
            ("version", version),
            ("args_schema_version", args_schema_version),
            ("docs_info", docs_info),
            ("docs_link", docs_link),
        ):
            if value is not None:
                setattr(req, field_name, value)
        _struct(req.meta_non_parallel, meta_non_parallel)
        _struct(req.meta_parallel, meta_parallel)
        _struct(req.args_schema_non_parallel, args_schema_non_parallel)
        _struct(req.args_schema_parallel, args_schema_parallel)
        resp = await self._unary(
            self._tasks.CreateTask, "/fractal.v2.TaskService/CreateTask", req, timeout
        )
        return resp.task

    async def get_task(self, task_id: int, *, timeout: float | None = None) -> task_pb2.Task:
        resp = await self._unary(
            self._tasks.GetTask,
            "/fractal.v2.TaskService/GetTask",
            task_service_pb2.GetTaskRequest(task_id=task_id),
            timeout,
        )
        return resp.task

    async def list_tasks(
        self,
        *,
        args_schema_parallel: bool = False,
        args_schema_non_parallel: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> task_service_pb2.ListTasksResponse:
        """Tasks, without their args schemas unless asked (the reference's two flags)."""
        return await self._unary(
            self._tasks.ListTasks,
            "/fractal.v2.TaskService/ListTasks",
            task_service_pb2.ListTasksRequest(
                args_schema_parallel=args_schema_parallel,
                args_schema_non_parallel=args_schema_non_parallel,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout,
        )

    async def update_task(
        self,
        task_id: int,
        *,
        name: str | None = None,
        version: str | None = None,
        command_non_parallel: str | None = None,
        command_parallel: str | None = None,
        input_types: Mapping[str, bool] | None = None,
        output_types: Mapping[str, bool] | None = None,
        timeout: float | None = None,
    ) -> task_pb2.Task:
        req = task_service_pb2.UpdateTaskRequest(task_id=task_id)
        for field_name, value in (
            ("name", name),
            ("version", version),
            ("command_non_parallel", command_non_parallel),
            ("command_parallel", command_parallel),
        ):
            if value is not None:
                setattr(req, field_name, value)
        if input_types is not None:
            req.input_types.types.update(input_types)
            req.input_types.SetInParent()
        if output_types is not None:
            req.output_types.types.update(output_types)
            req.output_types.SetInParent()
        resp = await self._unary(
            self._tasks.UpdateTask, "/fractal.v2.TaskService/UpdateTask", req, timeout
        )
        return resp.task

    async def delete_task(self, task_id: int, *, timeout: float | None = None) -> None:
        await self._unary(
            self._tasks.DeleteTask,
            "/fractal.v2.TaskService/DeleteTask",
            task_service_pb2.DeleteTaskRequest(task_id=task_id),
            timeout,
        )

    # -- WorkflowService ------------------------------------------------------------------------

    async def create_workflow(
        self,
        project_id: int,
        name: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.Workflow:
        resp = await self._unary(
            self._workflows.CreateWorkflow,
            "/fractal.v2.WorkflowService/CreateWorkflow",
            workflow_service_pb2.CreateWorkflowRequest(
                project_id=project_id, name=name, request_id=request_id or new_request_id()
            ),
            timeout,
        )
        return resp.workflow

    async def get_workflow(
        self, project_id: int, workflow_id: int, *, timeout: float | None = None
    ) -> workflow_pb2.Workflow:
        resp = await self._unary(
            self._workflows.GetWorkflow,
            "/fractal.v2.WorkflowService/GetWorkflow",
            workflow_service_pb2.GetWorkflowRequest(project_id=project_id, workflow_id=workflow_id),
            timeout,
        )
        return resp.workflow

    async def list_workflows(
        self,
        project_id: int = 0,
        *,
        include_args_schemas: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        """Workflows of a project (0: of every project of the caller)."""
        return await self._unary(
            self._workflows.ListWorkflows,
            "/fractal.v2.WorkflowService/ListWorkflows",
            workflow_service_pb2.ListWorkflowsRequest(
                project_id=project_id,
                include_args_schemas=include_args_schemas,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout,
        )

    async def update_workflow(
        self,
        project_id: int,
        workflow_id: int,
        *,
        name: str | None = None,
        reordered_workflow_task_ids: Sequence[int] = (),
        timeout: float | None = None,
    ) -> workflow_pb2.Workflow:
        req = workflow_service_pb2.UpdateWorkflowRequest(
            project_id=project_id,
            workflow_id=workflow_id,
            reordered_workflow_task_ids=list(reordered_workflow_task_ids),
        )
        if name is not None:
            req.name = name
        resp = await self._unary(
            self._workflows.UpdateWorkflow,
            "/fractal.v2.WorkflowService/UpdateWorkflow",
            req,
            timeout,
        )
        return resp.workflow

    async def get_workflow_status(
        self, project_id: int, workflow_id: int, dataset_id: int, *, timeout: float | None = None
    ) -> workflow_service_pb2.GetWorkflowStatusResponse:
        """Each workflow task's status on the dataset (history and the running job)."""
        return await self._unary(
            self._workflows.GetWorkflowStatus,
            "/fractal.v2.WorkflowService/GetWorkflowStatus",
            workflow_service_pb2.GetWorkflowStatusRequest(
                project_id=project_id, workflow_id=workflow_id, dataset_id=dataset_id
            ),
            timeout,
        )

    async def delete_workflow(
        self, project_id: int, workflow_id: int, *, timeout: float | None = None
    ) -> None:
        await self._unary(
            self._workflows.DeleteWorkflow,
            "/fractal.v2.WorkflowService/DeleteWorkflow",
            workflow_service_pb2.DeleteWorkflowRequest(
                project_id=project_id, workflow_id=workflow_id
            ),
            timeout,
        )

    async def create_workflow_task(
        self,
        project_id: int,
        workflow_id: int,
        task_id: int,
        *,
        order: int | None = None,
        args_non_parallel: StructLike | None = None,
        args_parallel: StructLike | None = None,
        meta_non_parallel: StructLike | None = None,
        meta_parallel: StructLike | None = None,
        input_filters: FiltersLike | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowTask:
        req = workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project_id,
            workflow_id=workflow_id,
            task_id=task_id,
            request_id=request_id or new_request_id(),
        )
        if order is not None:
            req.order = order
        _struct(req.args_non_parallel, args_non_parallel)
        _struct(req.args_parallel, args_parallel)
        _struct(req.meta_non_parallel, meta_non_parallel)
        _struct(req.meta_parallel, meta_parallel)
        _filters(req.input_filters, input_filters)
        resp = await self._unary(
            self._workflows.CreateWorkflowTask,
            "/fractal.v2.WorkflowService/CreateWorkflowTask",
            req,
            timeout,
        )
        return resp.workflow_task

    async def get_workflow_task(
        self,
        project_id: int,
        workflow_id: int,
        workflow_task_id: int,
        *,
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowTask:
        resp = await self._unary(
            self._workflows.GetWorkflowTask,
            "/fractal.v2.WorkflowService/GetWorkflowTask",
            workflow_service_pb2.GetWorkflowTaskRequest(
                project_id=project_id, workflow_id=workflow_id, workflow_task_id=workflow_task_id
            ),
            timeout,
        )
        return resp.workflow_task

    async def update_workflow_task(
        self,
        project_id: int,
        workflow_id: int,
        workflow_task_id: int,
        *,
        args_non_parallel: StructLike | None = None,
        args_parallel: StructLike | None = None,
        meta_non_parallel: StructLike | None = None,
        meta_parallel: StructLike | None = None,
        input_filters: FiltersLike | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.WorkflowTask:
        req = workflow_service_pb2.UpdateWorkflowTaskRequest(
            project_id=project_id, workflow_id=workflow_id, workflow_task_id=workflow_task_id
        )
        for target, value in (
            (req.args_non_parallel, args_non_parallel),
            (req.args_parallel, args_parallel),
            (req.meta_non_parallel, meta_non_parallel),
            (req.meta_parallel, meta_parallel),
        ):
            if value is not None:
                _struct(target, value)
                target.SetInParent()
        if input_filters is not None:
            _filters(req.input_filters, input_filters)
            req.input_filters.SetInParent()
        resp = await self._unary(
            self._workflows.UpdateWorkflowTask,
            "/fractal.v2.WorkflowService/UpdateWorkflowTask",
            req,
            timeout,
        )
        return resp.workflow_task

    async def delete_workflow_task(
        self,
        project_id: int,
        workflow_id: int,
        workflow_task_id: int,
        *,
        timeout: float | None = None,
    ) -> None:
        await self._unary(
            self._workflows.DeleteWorkflowTask,
            "/fractal.v2.WorkflowService/DeleteWorkflowTask",
            workflow_service_pb2.DeleteWorkflowTaskRequest(
                project_id=project_id, workflow_id=workflow_id, workflow_task_id=workflow_task_id
            ),
            timeout,
        )

    async def export_workflow(
        self, project_id: int, workflow_id: int, *, timeout: float | None = None
    ) -> workflow_service_pb2.WorkflowExport:
        resp = await self._unary(
            self._workflows.ExportWorkflow,
            "/fractal.v2.WorkflowService/ExportWorkflow",
            workflow_service_pb2.ExportWorkflowRequest(
                project_id=project_id, workflow_id=workflow_id
            ),
            timeout,
        )
        return resp.workflow

    async def import_workflow(
        self,
        project_id: int,
        workflow: workflow_service_pb2.WorkflowExport,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> workflow_pb2.Workflow:
        resp = await self._unary(
            self._workflows.ImportWorkflow,
            "/fractal.v2.WorkflowService/ImportWorkflow",
            workflow_service_pb2.ImportWorkflowRequest(
                project_id=project_id, workflow=workflow, request_id=request_id or new_request_id()
            ),
            timeout,
        )
        return resp.workflow

    # -- JobService -----------------------------------------------------------------------------

    async def submit_job(
        self,
        project_id: int,
        workflow_id: int,
        dataset_id: int,
        *,
        first_task_index: int | None = None,
        last_task_index: int | None = None,
        slurm_account: str | None = None,
        worker_init: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> job_pb2.Job:
        """Submit a job. A retry (by gRPC, or by the caller with the same ``request_id``)
        answers the job of the first submit, never a second job."""
        req = job_service_pb2.SubmitJobRequest(
            project_id=project_id,
            workflow_id=workflow_id,
            dataset_id=dataset_id,
            request_id=request_id or new_request_id(),
        )
        if first_task_index is not None:
            req.first_task_index = first_task_index
        if last_task_index is not None:
            req.last_task_index = last_task_index
        if slurm_account is not None:
            req.slurm_account = slurm_account
        if worker_init is not None:
            req.worker_init = worker_init
        resp = await self._unary(
            self._jobs.SubmitJob, "/fractal.v2.JobService/SubmitJob", req, timeout
        )
        return resp.job

    async def get_job(
        self,
        project_id: int,
        job_id: int,
        *,
        show_tmp_logs: bool = False,
        timeout: float | None = None,
    ) -> job_pb2.Job:
        resp = await self._unary(
            self._jobs.GetJob,
            "/fractal.v2.JobService/GetJob",
            job_service_pb2.GetJobRequest(
                project_id=project_id, job_id=job_id, show_tmp_logs=show_tmp_logs
            ),
            timeout,
        )
        return resp.job

    async def list_jobs(
        self,
        project_id: int = 0,
        *,
        workflow_id: int = 0,
        include_logs: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> job_service_pb2.ListJobsResponse:
        """Jobs of a project (0: of every project of the caller), newest first; logs only
        when asked."""
        return await self._unary(
            self._jobs.ListJobs,
            "/fractal.v2.JobService/ListJobs",
            job_service_pb2.ListJobsRequest(
                project_id=project_id,
                workflow_id=workflow_id,
                include_logs=include_logs,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout,
        )

    async def stop_job(
        self, project_id: int, job_id: int, *, timeout: float | None = None
    ) -> job_pb2.Job:
        resp = await self._unary(
            self._jobs.StopJob,
            "/fractal.v2.JobService/StopJob",
            job_service_pb2.StopJobRequest(project_id=project_id, job_id=job_id),
            timeout,
        )
        return resp.job

    async def watch_job(
        self,
        project_id: int,
        job_id: int,
        *,
        timeout: float | None = WATCH_TIMEOUT,
        resume_seconds: float = WATCH_RESUME_SECONDS,
    ) -> AsyncIterator[job_pb2.Job]:
        """The job now, then each change, until it is DONE or FAILED.

        A watch is a read: when its connection is lost (UNAVAILABLE, e.g. api restarted), it is
        opened again (for up to ``resume_seconds``) and goes on from the job's current state;
        a version already seen is not yielded twice. Fields the server leaves out of later
        messages (the dumps, the log) are kept from the last message that had them.
        """
        last_version = -1
        merged: job_pb2.Job | None = None
        async for _, resp in self._reopened(
            self._jobs.WatchJob,
            "/fractal.v2.JobService/WatchJob",
            job_service_pb2.WatchJobRequest(project_id=project_id, job_id=job_id),
            timeout,
            resume_seconds,
        ):
            job = resp.job
            if job.version <= last_version:
                continue
            last_version = job.version
            merged = merge_job(merged, job)
            yield merged
            if merged.status in (job_pb2.JOB_STATUS_DONE, job_pb2.JOB_STATUS_FAILED):
                return

    async def download_job_folder(
        self, project_id: int, job_id: int, *, timeout: float | None = TRANSFER_TIMEOUT
    ) -> AsyncIterator[bytes]:
        """The chunks of the zip archive of the job's folder."""
        async for resp in self._stream(
            self._jobs.DownloadJobFolder,
            "/fractal.v2.JobService/DownloadJobFolder",
            job_service_pb2.DownloadJobFolderRequest(project_id=project_id, job_id=job_id),
            timeout,
        ):
            yield resp.chunk


#: WatchJob sends the dumps and the log only when they changed (after its first message):
#: ``merge_job`` keeps them from earlier messages otherwise.


def merge_job(previous: job_pb2.Job | None, current: job_pb2.Job) -> job_pb2.Job:
    """``current`` with the fields it left empty taken from ``previous``."""
    if previous is None:
        return current
    merged = job_pb2.Job()
    merged.CopyFrom(current)
    if not merged.log:
        merged.log = previous.log
    if not merged.HasField("project_dump") and previous.HasField("project_dump"):
        merged.project_dump.CopyFrom(previous.project_dump)
    if not merged.HasField("workflow_dump") and previous.HasField("workflow_dump"):
        merged.workflow_dump.CopyFrom(previous.workflow_dump)
    if not merged.HasField("dataset_dump") and previous.HasField("dataset_dump"):
        merged.dataset_dump.CopyFrom(previous.dataset_dump)
    return merged
