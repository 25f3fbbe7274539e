"""Test helpers: a thin client over the generated stubs, and error-detail readers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from fractal.internal.v1 import job_execution_service_pb2_grpc
from fractal.v2 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    dataset_service_pb2_grpc,
    image_service_pb2_grpc,
    job_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    task_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
    workflow_service_pb2_grpc,
)


@dataclass
class ApiClient:
    """Stubs plus the caller's token; ``md`` is the call metadata."""

    channel: grpc.aio.Channel
    token: str
    email: str = ""

    @classmethod
    async def login(cls, channel: grpc.aio.Channel, email: str, password: str) -> ApiClient:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        resp = await stub.Login(auth_service_pb2.LoginRequest(email=email, password=password))
        return cls(channel, resp.access_token, email)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def users(self) -> user_service_pb2_grpc.UserServiceStub:
        return user_service_pb2_grpc.UserServiceStub(self.channel)

    @property
    def projects(self) -> project_service_pb2_grpc.ProjectServiceStub:
        return project_service_pb2_grpc.ProjectServiceStub(self.channel)

    @property
    def datasets(self) -> dataset_service_pb2_grpc.DatasetServiceStub:
        return dataset_service_pb2_grpc.DatasetServiceStub(self.channel)

    @property
    def images(self) -> image_service_pb2_grpc.ImageServiceStub:
        return image_service_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def tasks(self) -> task_service_pb2_grpc.TaskServiceStub:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

    @property
    def workflows(self) -> workflow_service_pb2_grpc.WorkflowServiceStub:
        return workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)

    @property
    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.channel)

    @property
    def internal(self) -> job_execution_service_pb2_grpc.JobExecutionServiceStub:
        return job_execution_service_pb2_grpc.JobExecutionServiceStub(self.channel)

    async def new_user(self, *, verified: bool = True, username: bool = True) -> ApiClient:
        """Create a user through UserService (as this superuser) and log in as it."""
        email = f"user-{secrets.token_hex(4)}@example.org"
        req = user_service_pb2.CreateUserRequest(email=email, password="secret-pw")
        if username:
            req.username = email.split("@")[0]
        created = await self.users.CreateUser(req, metadata=self.md)
        if verified:
            await self.users.UpdateUser(
                user_service_pb2.UpdateUserRequest(
                    user_id=created.user.id,
                    user=user_pb2.User(is_verified=True),
                    update_mask=field_mask_pb2.FieldMask(paths=["is_verified"]),
                ),
                metadata=self.md,
            )
        return await ApiClient.login(self.channel, email, "secret-pw")

    async def new_project(self, name: str | None = None) -> Any:
        resp = await self.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=name or f"p-{secrets.token_hex(3)}"),
            metadata=self.md,
        )
        return resp.project


def error_details(
    err: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    """The ErrorInfo and the violated field names carried by an error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info = None
    fields: list[str] = []
    if status is None:
        return None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return info, fields
