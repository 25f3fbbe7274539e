"""The api process: database, NATS, outbox relay, and the gRPC server with every servicer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fractal.internal.v1 import job_execution_service_pb2_grpc as internal_rpc
from fractal.internal.v1 import task_registration_service_pb2_grpc as registration_rpc
from fractal.v2 import (
    admin_service_pb2_grpc,
    auth_service_pb2_grpc,
    dataset_service_pb2_grpc,
    image_service_pb2_grpc,
    job_service_pb2_grpc,
    project_service_pb2_grpc,
    task_collection_service_pb2_grpc,
    task_service_pb2_grpc,
    user_service_pb2_grpc,
    workflow_service_pb2_grpc,
)
from fractal_api.access import ACCESS, INTERNAL_SERVICES, SERVICES
from fractal_api.context import ApiContext
from fractal_api.models import outbox
from fractal_api.servicers.admin import AdminServicer
from fractal_api.servicers.auth import AuthServicer, UserServicer
from fractal_api.servicers.collection_registration import TaskRegistrationServicer
from fractal_api.servicers.collections import TaskCollectionServicer
from fractal_api.servicers.images import ImageServicer
from fractal_api.servicers.internal import JobExecutionServicer
from fractal_api.servicers.jobs import JobServicer
from fractal_api.servicers.projects import DatasetServicer, ProjectServicer
from fractal_api.servicers.tasks import TaskServicer
from fractal_api.servicers.workflows import WorkflowServicer
from fractal_api.store import users
from fractal_grpc import pagination
from fractal_grpc.auth.principal import Principal, PrincipalCache
from fractal_grpc.auth.tokens import (
    INTERNAL_AUDIENCE,
    ISSUER,
    USER_AUDIENCE,
    TokenSigner,
    TokenVerifier,
)
from fractal_grpc.db import (
    make_engine,
    make_raw_pool,
    make_read_sessionmaker,
    make_sessionmaker,
    transaction,
)
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.events.outbox import OutboxRelay
from fractal_grpc.grpckit.auth import AuthInterceptor
from fractal_grpc.grpckit.interceptors import ErrorInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from fractal_grpc.grpckit.tracing import Tracing
from fractal_grpc.grpckit.validation import ValidationInterceptor
from fractal_grpc.observability import Observability
from fractal_grpc.settings import ApiSettings

log = logging.getLogger("fractal.api")


class ApiApp:
    def __init__(self, settings: ApiSettings, *, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.obs = Observability.of(
            settings,
            "api",
            settings.api_metrics_address,
            variable="FRACTAL_API_METRICS_ADDRESS",
            tracing=tracing,
        )
        pagination.use_secret(settings.page_token_key())
        self.engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.sessions = make_sessionmaker(self.engine)
        self.reads = make_read_sessionmaker(self.engine)
        self.ctx = ApiContext(
            settings=settings,
            sessions=self.sessions,
            reads=self.reads,
            pg=None,
            principals=PrincipalCache(self._fetch_user),
            signer=TokenSigner(
                settings.jwt_private_key_pem(),
                issuer=ISSUER,
                audience=USER_AUDIENCE,
                lifetime=settings.jwt_expire_seconds,
            ),
            subjects=Subjects(settings.nats_prefix),
        )
        auth = AuthInterceptor(
            ACCESS,
            user_verifier=TokenVerifier(settings.jwt_public_key_pem(), audience=USER_AUDIENCE),
            internal_verifier=TokenVerifier(
                settings.service_public_key_pem(), audience=INTERNAL_AUDIENCE
            ),
            load_user=self._load_user,
            user_changes=self.ctx.principals.watch,
        )
        interceptors = [
            *self.obs.server_interceptors(),
            ErrorInterceptor(),
            auth,
            ValidationInterceptor(),
        ]
        # Two listeners: the public API, and the internal one for the runner (and later
        # services), each with health and reflection of its own services only.
        self.server = GrpcServer(
            settings.api_address, interceptors, max_message_bytes=settings.api_max_message_bytes
        )
        self.internal_server = GrpcServer(
            settings.api_internal_address,
            interceptors,
            max_message_bytes=settings.api_max_message_bytes,
        )
        self.internal_port = 0
        ctx = self.ctx
        self.jobs = JobServicer(ctx)
        registrations: list[tuple[Callable[..., None], object]] = [
            (auth_service_pb2_grpc.add_AuthServiceServicer_to_server, AuthServicer(ctx)),
            (user_service_pb2_grpc.add_UserServiceServicer_to_server, UserServicer(ctx)),
            (project_service_pb2_grpc.add_ProjectServiceServicer_to_server, ProjectServicer(ctx)),
            (dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server, DatasetServicer(ctx)),
            (image_service_pb2_grpc.add_ImageServiceServicer_to_server, ImageServicer(ctx)),
            (task_service_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer(ctx)),
            (
                workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
                WorkflowServicer(ctx),
            ),
            (job_service_pb2_grpc.add_JobServiceServicer_to_server, self.jobs),
            (
                admin_service_pb2_grpc.add_AdminServiceServicer_to_server,
                AdminServicer(ctx, self.jobs.folders),
            ),
            (
                task_collection_service_pb2_grpc.add_TaskCollectionServiceServicer_to_server,
                TaskCollectionServicer(ctx),
            ),
            (internal_rpc.add_JobExecutionServiceServicer_to_server, JobExecutionServicer(ctx)),
            (
                registration_rpc.add_TaskRegistrationServiceServicer_to_server,
                TaskRegistrationServicer(ctx),
            ),
        ]
        for (register, servicer), name in zip(registrations, SERVICES, strict=True):
            server = self.internal_server if name in INTERNAL_SERVICES else self.server
            server.add(register, servicer, name)

    async def _load_user(self, subject: str) -> Principal | None:
        return await self.ctx.principals.get(int(subject)) if subject.isdigit() else None

    async def _fetch_user(self, user_id: int) -> Principal | None:
        return await users.load_principal(self.ctx.raw, user_id)

    async def start(self) -> int:
        s = self.settings
        self.ctx.pg = await make_raw_pool(s.database_url, size=s.database_pool_size)
        self.ctx.statistics.pool = self.ctx.pg
        async with transaction(self.sessions) as session:
            await users.ensure_first_superuser(
                session,
                email=s.default_admin_email,
                password=s.default_admin_password,
                username=s.default_admin_username,
            )
        self.obs.start()
        self.ctx.bus = await EventBus.connect(
            s.nats_url,
            self.ctx.subjects,
            name="fractal-api",
            metrics=self.obs.metrics,
            tracing=self.obs.tracing,
        )
        self.ctx.relay = OutboxRelay(
            self.sessions,
            outbox,
            self.ctx.bus,
            poll_seconds=s.outbox_poll_seconds,
            metrics=self.obs.metrics,
        )
        self.ctx.relay.start()
        self.internal_port = await self.internal_server.start()
        return await self.server.start()

    async def stop(self) -> None:
        grace = self.settings.grace_seconds
        await asyncio.gather(self.server.stop(grace), self.internal_server.stop(grace))
        await self.jobs.folders.close()
        if self.ctx.relay is not None:
            await self.ctx.relay.stop()
        if self.ctx.bus is not None:
            await self.ctx.bus.close()
        if self.ctx.pg is not None:
            await self.ctx.pg.close()
        await self.engine.dispose()
        self.obs.stop()
