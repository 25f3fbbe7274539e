"""``AdminMethods``: AdminService (superusers) as methods of ``Client``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from fractal.v2 import (
    admin_pb2,
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_pb2,
)
from fractal_grpc.client.base import TRANSFER_TIMEOUT, BaseClient


def _when(req: admin_service_pb2.ListAllJobsRequest, name: str, value: datetime | None) -> None:
    """Set the time-range field ``name`` (a naive datetime is taken as UTC)."""
    if value is not None:
        getattr(req, name).FromDatetime(value)


class AdminMethods(BaseClient):
    """What a superuser sees and does across every user; anyone else: PermissionDeniedError."""

    @property
    def _admin(self) -> admin_service_pb2_grpc.AdminServiceStub:
        return admin_service_pb2_grpc.AdminServiceStub(self.channel)

    async def list_all_projects(
        self,
        *,
        project_id: int | None = None,
        user_id: int | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_service_pb2.ListAllProjectsResponse:
        """Every project (or only ``project_id``, or those ``user_id`` is a member of)."""
        req = admin_service_pb2.ListAllProjectsRequest(page_size=page_size, page_token=page_token)
        if project_id is not None:
            req.project_id = project_id
        if user_id is not None:
            req.user_id = user_id
        return await self._unary(
            self._admin.ListAllProjects, "/fractal.v2.AdminService/ListAllProjects", req, timeout
        )

    async def list_all_jobs(
        self,
        *,
        job_id: int | None = None,
        user_id: int | None = None,
        project_id: int | None = None,
        dataset_id: int | None = None,
        workflow_id: int | None = None,
        status: job_pb2.JobStatus.ValueType = job_pb2.JOB_STATUS_UNSPECIFIED,
        start_time_min: datetime | None = None,
        start_time_max: datetime | None = None,
        end_time_min: datetime | None = None,
        end_time_max: datetime | None = None,
        include_logs: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_service_pb2.ListAllJobsResponse:
        """Every job matching all the given filters, newest first (times must be aware); each
        job's log only with ``include_logs``."""
        req = admin_service_pb2.ListAllJobsRequest(
            status=status, include_logs=include_logs, page_size=page_size, page_token=page_token
        )
        for name, value in (
            ("job_id", job_id),
            ("user_id", user_id),
            ("project_id", project_id),
            ("dataset_id", dataset_id),
            ("workflow_id", workflow_id),
        ):
            if value is not None:
                setattr(req, name, value)
        _when(req, "start_time_min", start_time_min)
        _when(req, "start_time_max", start_time_max)
        _when(req, "end_time_min", end_time_min)
        _when(req, "end_time_max", end_time_max)
        return await self._unary(
            self._admin.ListAllJobs, "/fractal.v2.AdminService/ListAllJobs", req, timeout
        )

    async def get_any_job(
        self, job_id: int, *, show_tmp_logs: bool = False, timeout: float | None = None
    ) -> job_pb2.Job:
        resp = await self._unary(
            self._admin.GetAnyJob,
            "/fractal.v2.AdminService/GetAnyJob",
            admin_service_pb2.GetAnyJobRequest(job_id=job_id, show_tmp_logs=show_tmp_logs),
            timeout,
        )
        return resp.job

    async def mark_job_failed(self, job_id: int, *, timeout: float | None = None) -> job_pb2.Job:
        """Mark a stuck SUBMITTED job FAILED (nothing is killed)."""
        resp = await self._unary(
            self._admin.MarkJobFailed,
            "/fractal.v2.AdminService/MarkJobFailed",
            admin_service_pb2.MarkJobFailedRequest(job_id=job_id),
            timeout,
        )
        return resp.job

    async def stop_any_job(self, job_id: int, *, timeout: float | None = None) -> job_pb2.Job:
        resp = await self._unary(
            self._admin.StopAnyJob,
            "/fractal.v2.AdminService/StopAnyJob",
            admin_service_pb2.StopAnyJobRequest(job_id=job_id),
            timeout,
        )
        return resp.job

    async def download_any_job_folder(
        self, job_id: int, *, timeout: float | None = TRANSFER_TIMEOUT
    ) -> AsyncIterator[bytes]:
        """The chunks of the zip archive of any job's folder."""
        async for resp in self._stream(
            self._admin.DownloadAnyJobFolder,
            "/fractal.v2.AdminService/DownloadAnyJobFolder",
            admin_service_pb2.DownloadAnyJobFolderRequest(job_id=job_id),
            timeout,
        ):
            yield resp.chunk

    async def query_tasks(
        self,
        *,
        task_id: int | None = None,
        source: str | None = None,
        version: str | None = None,
        name: str | None = None,
        owner: str | None = None,
        kind: admin_pb2.AdminTaskKind.ValueType = admin_pb2.ADMIN_TASK_KIND_UNSPECIFIED,
        max_number_of_results: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_service_pb2.QueryTasksResponse:
        """Tasks matching every given filter, each with the workflows that use it."""
        req = admin_service_pb2.QueryTasksRequest(
            kind=kind,
            max_number_of_results=max_number_of_results,
            page_size=page_size,
            page_token=page_token,
        )
        if task_id is not None:
            req.task_id = task_id
        for field, value in (
            ("source", source),
            ("version", version),
            ("name", name),
            ("owner", owner),
        ):
            if value is not None:
                setattr(req, field, value)
        return await self._unary(
            self._admin.QueryTasks, "/fractal.v2.AdminService/QueryTasks", req, timeout
        )

    async def get_settings(self, *, timeout: float | None = None) -> dict[str, str]:
        """The api's settings by environment variable name; secrets read "***"."""
        resp = await self._unary(
            self._admin.GetSettings,
            "/fractal.v2.AdminService/GetSettings",
            admin_service_pb2.GetSettingsRequest(),
            timeout,
        )
        return dict(resp.settings)
