"""The runner's side of ``JobExecutionService``: api's internal RPCs, with the service token.

One channel for the whole process. A call that fails with UNAVAILABLE (api restarting, network
trouble) is retried with exponential backoff until it succeeds or the caller is cancelled: every
RPC of the service is idempotent, so a retry is always safe, and a transient error must never
leave a job SUBMITTED forever. Other errors are raised as ``grpc.aio.AioRpcError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio

import fractal_grpc.client
from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal.internal.v1 import job_execution_service_pb2_grpc
from fractal.v2 import image_pb2, job_pb2
from fractal_grpc.auth.tokens import ServiceTokenSource

log = logging.getLogger("fractal.runner.api")

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

# The runner's one long-lived channel to api notices a dead peer.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


def open_channel(
    address: str, max_message_bytes: int = fractal_grpc.client.DEFAULT_API_MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    return fractal_grpc.client.open_channel(
        address, KEEPALIVE_OPTIONS, max_message_bytes=max_message_bytes
    )


class JobExecutionClient:
    """Async wrapper over ``JobExecutionServiceStub`` that retries UNAVAILABLE."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        tokens: ServiceTokenSource,
        *,
        first_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._stub = job_execution_service_pb2_grpc.JobExecutionServiceStub(channel)
        self._tokens = tokens
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self.first_backoff
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                log.warning(
                    "%s: api unavailable (%s); retrying in %.1fs", what, exc.details(), delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def get_job_spec(self, job_id: int) -> pb.JobSpec:
        async def call() -> pb.JobSpec:
            resp = await self._stub.GetJobSpec(
                pb.GetJobSpecRequest(job_id=job_id), metadata=self._tokens.metadata()
            )
            return resp.spec

        return await self._retry(f"GetJobSpec(job {job_id})", call)

    async def stream_task_inputs(self, job_id: int, task_order: int) -> list[image_pb2.Image]:
        """Every input image of the task, in list order (the stream is restarted on retry)."""

        async def call() -> list[image_pb2.Image]:
            images: list[image_pb2.Image] = []
            stream = self._stub.StreamTaskInputs(
                pb.StreamTaskInputsRequest(job_id=job_id, task_order=task_order),
                metadata=self._tokens.metadata(),
            )
            async for resp in stream:
                images.extend(resp.images)
            return images

        return await self._retry(f"StreamTaskInputs(job {job_id}, task {task_order})", call)

    async def apply_task_result(
        self, job_id: int, task_order: int, output: pb.TaskOutput
    ) -> pb.ApplyTaskResultResponse:
        request = pb.ApplyTaskResultRequest(job_id=job_id, task_order=task_order, output=output)

        async def call() -> pb.ApplyTaskResultResponse:
            resp: pb.ApplyTaskResultResponse = await self._stub.ApplyTaskResult(
                request, metadata=self._tokens.metadata()
            )
            return resp

        return await self._retry(f"ApplyTaskResult(job {job_id}, task {task_order})", call)

    async def finish_job(
        self,
        job_id: int,
        status: job_pb2.JobStatus.ValueType,
        log_text: str,
        failed_task_order: int | None = None,
    ) -> job_pb2.Job:
        # A task's output may hold NUL characters, which api refuses (PostgreSQL cannot store them).
        log_text = log_text.replace("\x00", "\\0")
        request = pb.FinishJobRequest(job_id=job_id, status=status, log=log_text)
        if failed_task_order is not None:
            request.failed_task_order = failed_task_order

        async def call() -> job_pb2.Job:
            resp = await self._stub.FinishJob(request, metadata=self._tokens.metadata())
            return resp.job

        return await self._retry(f"FinishJob(job {job_id})", call)
