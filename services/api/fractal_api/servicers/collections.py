"""TaskCollectionService (reference §3.2 "Task collection", §8.2): records a collection and
sends its command; the collector does the work and reports through TaskRegistrationService."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

import fractal_grpc.workflows as rules
from fractal.events.v1 import collection_events_pb2
from fractal.v2 import task_collection_pb2
from fractal.v2 import task_collection_service_pb2 as pb
from fractal.v2 import task_collection_service_pb2_grpc as rpc
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.models import CollectionWheel, Task, TaskCollection
from fractal_api.store import collections, requests, tasks
from fractal_api.views import collection_view, task_view
from fractal_grpc.auth.principal import current_user
from fractal_grpc.collection.manifest import ManifestError, parse_manifest
from fractal_grpc.collection.packages import PackageError, check_absolute_path, check_request
from fractal_grpc.collection.tasks import build_tasks
from fractal_grpc.convert import struct_to_dict
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import FailedPrecondition, NotFound, Violations, invalid_field
from fractal_grpc.pagination import decode_token, page_size, split_page

log = logging.getLogger("fractal.api.collections")

ENDED = (task_collection_pb2.COLLECTION_STATE_OK, task_collection_pb2.COLLECTION_STATE_FAILED)
# How often WatchCollection re-reads the record without an event (a safety net), and when
# NATS is unreachable.
WATCH_RESYNC_SECONDS = 5.0
WATCH_POLL_SECONDS = 0.5


class TaskCollectionServicer(rpc.TaskCollectionServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _spec(self, package: str, version: str | None, request: Any, prefix: str = "") -> Any:
        settings = self.ctx.settings
        try:
            return check_request(
                package,
                version,
                request.package_extras if request.HasField("package_extras") else None,
                request.python_version if request.HasField("python_version") else None,
                dict(request.pinned_package_versions),
                pythons=settings.tasks_pythons(),
                default_python=settings.tasks_python_default(),
            )
        except PackageError as exc:
            field = "filename" if prefix and exc.field == "package" else exc.field
            raise invalid_field(prefix + field, exc.message) from None

    async def CollectPip(
        self, request: pb.CollectPipRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        spec = self._spec(
            request.package.strip(),
            request.package_version if request.HasField("package_version") else None,
            request,
        )
        row = await self._record(spec, request)
        return pb.CollectPipResponse(collection=collection_view(row))

    async def UploadAndCollect(
        self,
        request_iterator: AsyncIterator[pb.UploadAndCollectRequest],
        context: grpc.aio.ServicerContext,
    ) -> Any:
        header: pb.WheelUpload | None = None
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        received = 0
        limit = self.ctx.settings.collection_max_wheel_bytes
        async for message in request_iterator:
            if message.HasField("header"):
                if header is not None:
                    raise invalid_field("header", "only the first message carries it")
                header = message.header
                if header.size > limit:
                    raise invalid_field("header.size", f"a wheel may have at most {limit} bytes")
            elif header is None:
                raise invalid_field("header", "the first message must carry it")
            received += len(message.chunk)
            if received > header.size:
                raise invalid_field("chunk", f"more bytes than the declared {header.size}")
            digest.update(message.chunk)
            chunks.append(message.chunk)
        if header is None:
            raise invalid_field("header", "the first message must carry it")
        if received != header.size:
            raise invalid_field("header.size", f"declared {header.size} bytes, received {received}")
        if digest.hexdigest() != header.sha256:
            raise invalid_field("header.sha256", "does not match the bytes received")
        # The file name goes through the wheel-path grammar (as if in a folder of its own).
        spec = self._spec(f"/upload/{header.filename}", None, header, prefix="header.")
        upload = CollectionWheel(
            filename=header.filename, sha256=header.sha256, content=b"".join(chunks)
        )
        row = await self._record(spec, header, upload, method="UploadAndCollect", prefix="header.")
        return pb.UploadAndCollectResponse(collection=collection_view(row))

    async def CollectCustom(
        self, request: pb.CollectCustomRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        me = current_user()
        violations = Violations()
        paths = {}
        for field in ("python_interpreter", "package_root"):
            try:
                paths[field] = check_absolute_path(getattr(request, field), field)
            except PackageError as exc:
                violations.add(exc.field, exc.message)
        source = validation.name(request.source, "source", violations)
        try:
            manifest = parse_manifest(struct_to_dict(request.manifest))
        except ManifestError as exc:
            violations.add("manifest", str(exc))
        violations.raise_if_any()
        owner = me.username or me.slurm_user
        if not owner:
            raise FailedPrecondition(
                "Cannot add new tasks because current user does not have `username` or "
                "`slurm_user` attributes.",
                reason="TASK_OWNER_UNKNOWN",
            )
        drafts = build_tasks(
            manifest,
            python=paths["python_interpreter"],
            package_root=paths["package_root"],
            source=f"{owner}:{source}",
            version=request.version if request.HasField("version") else "",
        )

        async def create(session: AsyncSession) -> list[Task]:
            return [
                await tasks.create(
                    session,
                    owner=owner,
                    type=rules.task_type(d.command_non_parallel, d.command_parallel),
                    **{k: v for k, v in dataclasses.asdict(d).items() if k != "version"},
                    version=d.version or None,
                )
                for d in drafts
            ]

        async with transaction(self.ctx.sessions) as session:
            # A retry replays the tasks of the first call: the same request makes the same
            # sources (the key's request hash says it is the same request).
            created = await requests.once(
                session,
                me.user_id or 0,
                request,
                create=lambda: create(session),
                replay=lambda _: tasks.by_sources(session, [d.source for d in drafts]),
                resource_id=lambda made: made[0].id,
            )
        return pb.CollectCustomResponse(tasks=[task_view(t) for t in created])

    async def _record(
        self,
        spec: Any,
        request: Message,
        upload: CollectionWheel | None = None,
        *,
        method: str | None = None,
        prefix: str = "",
    ) -> TaskCollection:
        """Record the collection and its command once per request_id (``requests.once``: a
        retry replays the collection the key first recorded, and sends nothing)."""
        user_id = current_user().user_id or 0
        try:
            async with transaction(self.ctx.sessions) as session:
                row = await requests.once(
                    session,
                    user_id,
                    request,
                    create=lambda: collections.create(
                        session, self.ctx.subjects, spec, user_id, upload=upload
                    ),
                    replay=lambda earlier: collections.get(session, earlier),
                    method=method,
                    field=prefix + "request_id",
                )
        except collections.CollectionRace:
            async with self.ctx.reads() as session:
                existing = await collections.find_active(session, spec)
            if existing is None:  # the other one failed meanwhile
                raise FailedPrecondition(
                    "another collection of this package was recorded at the same time; retry",
                    reason="COLLECTION_RACE",
                ) from None
            raise collections.already_exists(existing) from None
        self.ctx.outbox_written()
        return row

    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self.ctx.reads() as session:
            row = await collections.get(session, request.collection_id)
        return pb.GetCollectionResponse(collection=collection_view(row, with_log=request.with_log))

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        state = decode_token(request.page_token, "collections", ("before",))
        async with self.ctx.reads() as session:
            rows = await collections.list_page(
                session, before_id=state["before"] if state else None, limit=size + 1
            )
        page, token = split_page(rows, size, "collections", lambda c: {"before": c.id})
        return pb.ListCollectionsResponse(
            collections=[collection_view(c) for c in page], next_page_token=token
        )

    async def _load(self, collection_id: int) -> TaskCollection:
        async with self.ctx.reads() as session:
            row = await session.get(TaskCollection, collection_id)
        if row is None:
            raise NotFound(f"Collection {collection_id} not found")
        return row

    async def WatchCollection(
        self, request: pb.WatchCollectionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchCollectionResponse]:
        async with self.ctx.reads() as session:
            await collections.get(session, request.collection_id)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_event(msg: Any) -> None:
            queue.put_nowait(msg.data)

        # Subscribe before reading, so no change falls in between; events only say that
        # something changed (the log is read from the record).
        sub = None
        resync = WATCH_RESYNC_SECONDS
        try:
            assert self.ctx.bus is not None
            sub = await self.ctx.bus.nc.subscribe(
                self.ctx.subjects.collection_event(request.collection_id), cb=on_event
            )
        except Exception:  # noqa: BLE001 - degrade to polling
            log.warning("WatchCollection without NATS events; polling %s", request.collection_id)
            resync = WATCH_POLL_SECONDS
        try:
            sent_version, sent_log = 0, 0
            while True:
                row = await self._load(request.collection_id)
                if row.version > sent_version:
                    sent_version = row.version
                    new_log = row.log[sent_log:]
                    sent_log = len(row.log)
                    view = collection_view(row)
                    yield pb.WatchCollectionResponse(collection=view, new_log=new_log)
                    if view.state in ENDED:
                        return
                try:
                    data = await asyncio.wait_for(queue.get(), resync)
                    collection_events_pb2.CollectionChanged.FromString(data)
                    while not queue.empty():  # several changes: one read
                        queue.get_nowait()
                except TimeoutError:
                    pass
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _activity(self, collection_id: int, kind: str) -> Any:
        async with transaction(self.ctx.sessions) as session:
            target = await collections.get(session, collection_id, lock=True)
            activity = await collections.start_activity(
                session, self.ctx.subjects, target, kind, current_user().user_id or 0
            )
        self.ctx.outbox_written()
        return collection_view(activity)

    async def DeactivateCollection(
        self, request: pb.DeactivateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        activity = await self._activity(request.collection_id, collections.DEACTIVATE)
        return pb.DeactivateCollectionResponse(activity=activity)

    async def ReactivateCollection(
        self, request: pb.ReactivateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        activity = await self._activity(request.collection_id, collections.REACTIVATE)
        return pb.ReactivateCollectionResponse(activity=activity)

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async with transaction(self.ctx.sessions) as session:
            row = await collections.get(session, request.collection_id, lock=True)
            await collections.delete_collection(session, row)
        return pb.DeleteCollectionResponse()
