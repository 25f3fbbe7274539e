"""The stub bundle over a channel: a login, the caller's metadata and one stub per public
service. Used by the tests and the benchmarks (people use ``Client``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import grpc.aio
from google.protobuf import field_mask_pb2

from fractal.internal.v1 import job_execution_service_pb2_grpc
from fractal.v2 import (
    admin_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    dataset_service_pb2_grpc,
    image_service_pb2_grpc,
    job_service_pb2_grpc,
    project_service_pb2_grpc,
    task_collection_service_pb2_grpc,
    task_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
    workflow_service_pb2_grpc,
)

Metadata = tuple[tuple[str, str], ...]


@dataclass
class FractalClient:
    """The stubs plus the caller's token; ``md`` is the metadata to pass with every call.

    ``channel`` reaches api's public listener; ``internal_channel``, if given, its internal
    listener (FRACTAL_API_INTERNAL_ADDRESS), for the ``internal`` stub."""

    channel: grpc.aio.Channel
    token: str
    email: str = ""
    internal_channel: grpc.aio.Channel | None = None

    @classmethod
    async def login(
        cls,
        channel: grpc.aio.Channel,
        email: str,
        password: str,
        *,
        internal_channel: grpc.aio.Channel | None = None,
    ) -> Self:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        resp = await stub.Login(auth_service_pb2.LoginRequest(email=email, password=password))
        return cls(channel, resp.access_token, email, internal_channel)

    @property
    def md(self) -> Metadata:
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
    def admin(self) -> admin_service_pb2_grpc.AdminServiceStub:
        """AdminService (superusers only)."""
        return admin_service_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def collections(self) -> task_collection_service_pb2_grpc.TaskCollectionServiceStub:
        return task_collection_service_pb2_grpc.TaskCollectionServiceStub(self.channel)

    @property
    def internal(self) -> job_execution_service_pb2_grpc.JobExecutionServiceStub:
        """The runner's API on the internal listener (needs a service token, not a user's)."""
        if self.internal_channel is None:
            raise RuntimeError("this client has no channel to api's internal listener")
        return job_execution_service_pb2_grpc.JobExecutionServiceStub(self.internal_channel)

    async def create_user(
        self, email: str, password: str, *, username: str | None = None, verified: bool = False
    ) -> user_pb2.User:
        """Register a user (superusers only) and, with ``verified``, mark it verified."""
        req = user_service_pb2.CreateUserRequest(email=email, password=password)
        if username is not None:
            req.username = username
        user = (await self.users.CreateUser(req, metadata=self.md)).user
        if verified:
            user = (
                await self.users.UpdateUser(
                    user_service_pb2.UpdateUserRequest(
                        user_id=user.id,
                        user=user_pb2.User(is_verified=True),
                        update_mask=field_mask_pb2.FieldMask(paths=["is_verified"]),
                    ),
                    metadata=self.md,
                )
            ).user
        return user
