"""TaskRegistrationService: the collector's internal RPCs (lease, progress, the tasks of a
collection registered in one transaction)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from fractal.internal.v1 import task_registration_service_pb2 as pb
from fractal.internal.v1 import task_registration_service_pb2_grpc as rpc
from fractal_api.context import ApiContext
from fractal_api.store import collections
from fractal_api.views import collection_view
from fractal_grpc.collection.naming import package_source
from fractal_grpc.convert import struct_to_dict
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import InvalidArgument, Violations
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.workflows import task_type

WHEEL_CHUNK_BYTES = 1024 * 1024


def _task_fields(task: pb.CollectedTask, index: int, violations: Violations) -> dict[str, Any]:
    def opt(name: str) -> Any:
        return getattr(task, name) if task.HasField(name) else None  # type: ignore[arg-type]

    np, p = opt("command_non_parallel"), opt("command_parallel")
    if not np and not p:
        violations.add(f"success.tasks[{index}]", "a task needs at least one command")
    fields: dict[str, Any] = {
        "name": task.name,
        "source": task.source,
        "type": task_type(np, p),
        "command_non_parallel": np,
        "command_parallel": p,
        "meta_non_parallel": struct_to_dict(task.meta_non_parallel) or {},
        "meta_parallel": struct_to_dict(task.meta_parallel) or {},
        "args_schema_non_parallel": struct_to_dict(
            task.args_schema_non_parallel, task.HasField("args_schema_non_parallel")
        ),
        "args_schema_parallel": struct_to_dict(
            task.args_schema_parallel, task.HasField("args_schema_parallel")
        ),
        "args_schema_version": opt("args_schema_version"),
        "docs_info": opt("docs_info"),
        "docs_link": opt("docs_link"),
    }
    for name in ("input_types", "output_types"):
        try:
            fields[name] = validate_keys(dict(getattr(task, name)), name)
        except ValueError as exc:
            violations.add(f"success.tasks[{index}].{name}", str(exc))
    return fields


class TaskRegistrationServicer(rpc.TaskRegistrationServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def ClaimCollection(
        self, request: pb.ClaimCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            row = await collections.get(session, request.collection_id, lock=True)
            claimed = await collections.claim(
                session, self.ctx.subjects, row, request.owner, request.lease_seconds
            )
        self.ctx.outbox_written()
        return pb.ClaimCollectionResponse(
            claimed=claimed, collection=collection_view(row, with_log=True), attempt=row.attempts
        )

    async def ReportCollectionProgress(
        self, request: pb.ReportCollectionProgressRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            row = await collections.get(session, request.collection_id, lock=True)
            await collections.report(
                session,
                self.ctx.subjects,
                row,
                request.owner,
                request.lease_seconds,
                log=request.log,
                env_dir=request.env_dir if request.HasField("env_dir") else None,
                package_version=request.package_version
                if request.HasField("package_version")
                else None,
            )
        self.ctx.outbox_written()
        return pb.ReportCollectionProgressResponse()

    async def FinishCollection(
        self, request: pb.FinishCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            row = await collections.get(session, request.collection_id, lock=True)
            if row.state in collections.ENDED:
                return pb.FinishCollectionResponse(collection=collection_view(row))
            collections.check_lease(row, request.owner)
            result = request.WhichOneof("result")
            if result == "error":
                await collections.fail(
                    session, self.ctx.subjects, row, log=request.log, error=request.error
                )
            elif result == "activity_done" or row.kind != collections.COLLECT:
                if row.kind == collections.COLLECT or not request.activity_done:
                    raise InvalidArgument(
                        "a collection ends with success, an activity with activity_done",
                        violations=[("result", "does not fit the record's kind")],
                    )
                await collections.activity_done(session, self.ctx.subjects, row, log=request.log)
            else:
                success = request.success
                prefix = package_source(
                    row.origin,
                    row.package_name,
                    success.package_version,
                    row.package_extras or None,
                    row.python_version,
                )
                violations = Violations()
                tasks = []
                for i, task in enumerate(success.tasks):
                    if not task.source.startswith(prefix + ":"):
                        violations.add(f"success.tasks[{i}].source", f"must start with {prefix}:")
                    tasks.append(_task_fields(task, i, violations))
                violations.raise_if_any()
                await collections.succeed(
                    session,
                    self.ctx.subjects,
                    row,
                    log=request.log,
                    package_version=success.package_version,
                    env_dir=success.env_dir,
                    freeze=success.freeze,
                    tasks=tasks,
                )
        self.ctx.outbox_written()
        return pb.FinishCollectionResponse(collection=collection_view(row))

    async def ReadCollectionWheel(
        self, request: pb.ReadCollectionWheelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadCollectionWheelResponse]:
        async with self.ctx.reads() as session:
            row = await collections.get(session, request.collection_id)
            wheel = await collections.wheel_of(session, row)
        content = wheel.content
        for start in range(0, len(content), WHEEL_CHUNK_BYTES):
            yield pb.ReadCollectionWheelResponse(chunk=content[start : start + WHEEL_CHUNK_BYTES])
