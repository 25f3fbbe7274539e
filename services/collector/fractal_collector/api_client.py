"""The collector's side of api's ``TaskRegistrationService``, every call under the internal
clients' retry policy (``fractal_grpc.retry``). The three RPCs are safe to repeat: a claim by
the holder renews it, a progress report renews the lease and appends its text (a report
retried after a lost answer may repeat that text in the log), and a finish of an ended
collection returns it as is. FAILED_PRECONDITION (the lease is another's) is ``LeaseLost``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc.aio

from fractal.internal.v1 import task_registration_service_pb2 as pb
from fractal.internal.v1 import task_registration_service_pb2_grpc as rpc
from fractal.v2 import task_collection_pb2
from fractal_grpc.auth.tokens import ServiceTokenSource
from fractal_grpc.retry import RetryPolicy

T = TypeVar("T")


class LeaseLost(Exception):
    """api says this collector no longer holds the collection."""


class RegistrationClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        tokens: ServiceTokenSource,
        *,
        owner: str,
        lease_seconds: float,
        policy: RetryPolicy | None = None,
        on_finished: Callable[[task_collection_pb2.CollectionState.ValueType], None] | None = None,
    ) -> None:
        self._stub = rpc.TaskRegistrationServiceStub(channel)
        self._tokens = tokens
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.policy = policy or RetryPolicy()
        #: Told the final state of each collection api accepted as ended (metrics).
        self.on_finished = on_finished

    async def claim(self, collection_id: int) -> pb.ClaimCollectionResponse:
        request = pb.ClaimCollectionRequest(
            collection_id=collection_id, owner=self.owner, lease_seconds=self.lease_seconds
        )

        async def attempt(deadline: float) -> pb.ClaimCollectionResponse:
            resp: pb.ClaimCollectionResponse = await self._stub.ClaimCollection(
                request, metadata=self._tokens.metadata(), timeout=deadline
            )
            return resp

        return await self.policy.call(f"ClaimCollection({collection_id})", attempt, idempotent=True)

    async def report(
        self,
        collection_id: int,
        log: str = "",
        *,
        env_dir: str | None = None,
        package_version: str | None = None,
    ) -> None:
        request = pb.ReportCollectionProgressRequest(
            collection_id=collection_id,
            owner=self.owner,
            lease_seconds=self.lease_seconds,
            log=log.replace("\x00", "\\0"),
        )
        if env_dir is not None:
            request.env_dir = env_dir
        if package_version is not None:
            request.package_version = package_version

        async def attempt(deadline: float) -> None:
            await self._stub.ReportCollectionProgress(
                request, metadata=self._tokens.metadata(), timeout=deadline
            )

        await self._call(f"ReportCollectionProgress({collection_id})", attempt)

    async def finish(self, request: pb.FinishCollectionRequest) -> pb.FinishCollectionResponse:
        request.owner = self.owner
        request.log = request.log.replace("\x00", "\\0")

        async def attempt(deadline: float) -> pb.FinishCollectionResponse:
            resp: pb.FinishCollectionResponse = await self._stub.FinishCollection(
                request, metadata=self._tokens.metadata(), timeout=deadline
            )
            return resp

        response = await self._call(f"FinishCollection({request.collection_id})", attempt)
        if self.on_finished is not None:
            self.on_finished(response.collection.state)
        return response

    async def read_wheel(self, collection_id: int) -> bytes:
        """The wheel uploaded for a collection (the stream is restarted on retry)."""

        async def attempt(deadline: float) -> bytes:
            parts: list[bytes] = []
            stream = self._stub.ReadCollectionWheel(
                pb.ReadCollectionWheelRequest(collection_id=collection_id),
                metadata=self._tokens.metadata(),
                timeout=deadline,
            )
            async for resp in stream:
                parts.append(resp.chunk)
            return b"".join(parts)

        return await self.policy.call(
            f"ReadCollectionWheel({collection_id})", attempt, idempotent=True
        )

    async def _call(self, what: str, attempt: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await self.policy.call(what, attempt, idempotent=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise LeaseLost(exc.details() or "lease lost") from None
            raise
