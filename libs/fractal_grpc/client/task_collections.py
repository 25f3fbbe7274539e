"""``CollectionMethods``: TaskCollectionService as methods of ``Client``.

A collection is long-running: ``collect_pip`` and ``upload_and_collect`` return the PENDING
record at once, and ``watch_collection`` follows it (with its log) until OK or FAILED.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import grpc

from fractal.v2 import (
    task_collection_pb2,
    task_collection_service_pb2,
    task_collection_service_pb2_grpc,
    task_pb2,
)
from fractal_grpc.client.base import (
    TRANSFER_TIMEOUT,
    WATCH_RESUME_SECONDS,
    WATCH_TIMEOUT,
    BaseClient,
    StructLike,
    _struct,
    new_request_id,
)
from fractal_grpc.client.errors import from_rpc_error

#: The bytes per message of an upload (the server takes at most 4 MiB).
UPLOAD_CHUNK_BYTES = 1024 * 1024
#: The states after which a collection (or activity) no longer changes.
ENDED = (task_collection_pb2.COLLECTION_STATE_OK, task_collection_pb2.COLLECTION_STATE_FAILED)


def _upload_messages(
    path: Path, header: task_collection_service_pb2.WheelUpload
) -> Iterator[task_collection_service_pb2.UploadAndCollectRequest]:
    with path.open("rb") as f:
        first = True
        while True:
            chunk = f.read(UPLOAD_CHUNK_BYTES)
            if first:
                yield task_collection_service_pb2.UploadAndCollectRequest(
                    header=header, chunk=chunk
                )
                first = False
            elif chunk:
                yield task_collection_service_pb2.UploadAndCollectRequest(chunk=chunk)
            if not chunk:
                return


def _wheel_header(path: Path) -> task_collection_service_pb2.WheelUpload:
    """The file name, size and SHA-256 of a local wheel."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(UPLOAD_CHUNK_BYTES), b""):
            digest.update(block)
    return task_collection_service_pb2.WheelUpload(
        filename=path.name, sha256=digest.hexdigest(), size=path.stat().st_size
    )


class CollectionMethods(BaseClient):
    """Collect task packages, follow and manage the collections."""

    @property
    def _collections(self) -> task_collection_service_pb2_grpc.TaskCollectionServiceStub:
        return task_collection_service_pb2_grpc.TaskCollectionServiceStub(self.channel)

    async def collect_pip(
        self,
        package: str,
        *,
        package_version: str | None = None,
        package_extras: str | None = None,
        python_version: str | None = None,
        pinned_package_versions: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> task_collection_pb2.TaskCollection:
        """Collect ``package`` (an index name, or a wheel's absolute path on the server's
        machine); returns the PENDING collection. Already collected: AlreadyExistsError with
        ``metadata["collection_id"]``. A retry (by gRPC on UNAVAILABLE, or by the caller with
        the same ``request_id``) returns the same collection and collects nothing again."""
        req = task_collection_service_pb2.CollectPipRequest(
            package=package,
            pinned_package_versions=dict(pinned_package_versions or {}),
            request_id=request_id or new_request_id(),
        )
        if package_version is not None:
            req.package_version = package_version
        if package_extras is not None:
            req.package_extras = package_extras
        if python_version is not None:
            req.python_version = python_version
        resp = await self._unary(
            self._collections.CollectPip,
            "/fractal.v2.TaskCollectionService/CollectPip",
            req,
            timeout,
        )
        return resp.collection

    async def upload_and_collect(
        self,
        wheel: str | os.PathLike[str],
        *,
        package_extras: str | None = None,
        python_version: str | None = None,
        pinned_package_versions: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = TRANSFER_TIMEOUT,
    ) -> task_collection_pb2.TaskCollection:
        """Send a local wheel file to the server and collect it; returns the PENDING
        collection. Never resent by gRPC (a client stream): on UNAVAILABLE, send it again with
        the same ``request_id`` (the header carries it), which returns the collection the
        first upload recorded, if it got that far, and records it otherwise."""
        path = Path(wheel)
        header = await asyncio.to_thread(_wheel_header, path)
        header.request_id = request_id or new_request_id()
        header.pinned_package_versions.update(dict(pinned_package_versions or {}))
        if package_extras is not None:
            header.package_extras = package_extras
        if python_version is not None:
            header.python_version = python_version
        name = "/fractal.v2.TaskCollectionService/UploadAndCollect"
        await self._ensure_token()
        try:
            resp = await self._collections.UploadAndCollect(
                _upload_messages(path, header), metadata=self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, name) from None
        return resp.collection

    async def collect_custom(
        self,
        manifest: StructLike,
        python_interpreter: str,
        package_root: str,
        source: str,
        *,
        version: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> list[task_pb2.Task]:
        """Register the tasks of a package already installed (owned by the caller). A retry
        with the same ``request_id`` returns the tasks the first call registered."""
        req = task_collection_service_pb2.CollectCustomRequest(
            python_interpreter=python_interpreter,
            package_root=package_root,
            source=source,
            request_id=request_id or new_request_id(),
        )
        _struct(req.manifest, manifest)
        req.manifest.SetInParent()
        if version is not None:
            req.version = version
        resp = await self._unary(
            self._collections.CollectCustom,
            "/fractal.v2.TaskCollectionService/CollectCustom",
            req,
            timeout,
        )
        return list(resp.tasks)

    async def get_collection(
        self, collection_id: int, *, with_log: bool = False, timeout: float | None = None
    ) -> task_collection_pb2.TaskCollection:
        resp = await self._unary(
            self._collections.GetCollection,
            "/fractal.v2.TaskCollectionService/GetCollection",
            task_collection_service_pb2.GetCollectionRequest(
                collection_id=collection_id, with_log=with_log
            ),
            timeout,
        )
        return resp.collection

    async def watch_collection(
        self,
        collection_id: int,
        *,
        timeout: float | None = WATCH_TIMEOUT,
        resume_seconds: float = WATCH_RESUME_SECONDS,
    ) -> AsyncIterator[task_collection_service_pb2.WatchCollectionResponse]:
        """The collection now (with its log so far), then each change with the log lines it
        added, until OK or FAILED.

        As ``watch_job``: a lost connection (UNAVAILABLE) is reopened for up to
        ``resume_seconds``; a version already seen is not yielded again, and the log text
        already yielded is not repeated (a reopened watch starts with the whole log).
        """
        last_version = -1
        log_seen = 0
        async for first, resp in self._reopened(
            self._collections.WatchCollection,
            "/fractal.v2.TaskCollectionService/WatchCollection",
            task_collection_service_pb2.WatchCollectionRequest(collection_id=collection_id),
            timeout,
            resume_seconds,
        ):
            # The first message of a connection carries the whole log so far: keep only what
            # was not yielded yet.
            new_log = resp.new_log[log_seen:] if first else resp.new_log
            if resp.collection.version <= last_version and not new_log:
                continue
            last_version = max(last_version, resp.collection.version)
            log_seen += len(new_log)
            out = task_collection_service_pb2.WatchCollectionResponse(new_log=new_log)
            out.collection.CopyFrom(resp.collection)
            yield out
            if resp.collection.state in ENDED:
                return

    async def list_collections(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> task_collection_service_pb2.ListCollectionsResponse:
        """Every collection and activity, newest first, without logs."""
        return await self._unary(
            self._collections.ListCollections,
            "/fractal.v2.TaskCollectionService/ListCollections",
            task_collection_service_pb2.ListCollectionsRequest(
                page_size=page_size, page_token=page_token
            ),
            timeout,
        )

    async def deactivate_collection(
        self, collection_id: int, *, timeout: float | None = None
    ) -> task_collection_pb2.TaskCollection:
        """Make a collected package's tasks unrunnable; returns the activity (watch it)."""
        resp = await self._unary(
            self._collections.DeactivateCollection,
            "/fractal.v2.TaskCollectionService/DeactivateCollection",
            task_collection_service_pb2.DeactivateCollectionRequest(collection_id=collection_id),
            timeout,
        )
        return resp.activity

    async def reactivate_collection(
        self, collection_id: int, *, timeout: float | None = None
    ) -> task_collection_pb2.TaskCollection:
        """Rebuild a deactivated package's environment; returns the activity (watch it)."""
        resp = await self._unary(
            self._collections.ReactivateCollection,
            "/fractal.v2.TaskCollectionService/ReactivateCollection",
            task_collection_service_pb2.ReactivateCollectionRequest(collection_id=collection_id),
            timeout,
        )
        return resp.activity

    async def delete_collection(self, collection_id: int, *, timeout: float | None = None) -> None:
        """Delete a FAILED or deactivated collection with its tasks."""
        await self._unary(
            self._collections.DeleteCollection,
            "/fractal.v2.TaskCollectionService/DeleteCollection",
            task_collection_service_pb2.DeleteCollectionRequest(collection_id=collection_id),
            timeout,
        )
