"""The runner's side of ``JobExecutionService``: api's internal RPCs, with the service token.

One channel for the whole process. Every call goes through the internal clients' one retry
policy (``fractal_grpc.retry``): a deadline per attempt, and retries with jittered exponential
backoff on UNAVAILABLE / DEADLINE_EXCEEDED / ABORTED (and RESOURCE_EXHAUSTED with RetryInfo),
until the call succeeds or the caller is cancelled. The four RPCs are idempotent by design:
GetJobSpec and StreamTaskInputs only read (a task's inputs are fixed until its result is
applied, and a stream is restarted from the start), ApplyTaskResult is applied once per
``(job_id, task_order)`` (a repeat answers ``already_applied``), and FinishJob returns an ended
job unchanged. ReportTaskProgress is best effort: one attempt, its error raised to the reporter
(``fractal_runner.progress``), which drops it. Other errors are raised as ``grpc.aio.AioRpcError``.

The channel carries the one gRPC service config of every client (``protos/service_config.json``,
through ``fractal_grpc.client.open_channel``), which also lets gRPC resend these four calls on
UNAVAILABLE before they got an answer; the policy above retries whatever remains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import grpc.aio

import fractal_grpc.client
from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal.internal.v1 import job_execution_service_pb2_grpc
from fractal.v2 import image_pb2, job_pb2
from fractal_grpc.auth.tokens import ServiceTokenSource
from fractal_grpc.retry import RetryPolicy
from fractal_runner.job_folders import relocate

#: Reading a task's inputs and applying its result grow with the image list: a longer deadline.
BULK_ATTEMPT_SECONDS = 300.0
#: A progress report is best effort: one attempt with a short deadline (the final counts travel
#: with ApplyTaskResult / FinishJob, which are retried).
PROGRESS_ATTEMPT_SECONDS = 10.0

# The runner's one long-lived channel to api notices a dead peer.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


def open_channel(
    address: str,
    max_message_bytes: int = fractal_grpc.client.DEFAULT_API_MAX_MESSAGE_BYTES,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    return fractal_grpc.client.open_channel(
        address, KEEPALIVE_OPTIONS, max_message_bytes=max_message_bytes, interceptors=interceptors
    )


class JobExecutionClient:
    """Async wrapper over ``JobExecutionServiceStub``, every call under ``policy``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        tokens: ServiceTokenSource,
        *,
        policy: RetryPolicy | None = None,
        working_base_dir: Path | None = None,
        on_finished: Callable[[job_pb2.JobStatus.ValueType], None] | None = None,
    ) -> None:
        #: Told each final state api accepted (the runner's job counter).
        self.on_finished = on_finished
        self._stub = job_execution_service_pb2_grpc.JobExecutionServiceStub(channel)
        self._tokens = tokens
        self.policy = policy or RetryPolicy()
        # Where this runner keeps job folders: a spec's folder is placed there, under the name
        # api recorded (``fractal_runner.job_folders.relocate``). None: the spec's path as is.
        self.working_base_dir = working_base_dir

    async def get_job_spec(self, job_id: int) -> pb.JobSpec:
        async def attempt(deadline: float) -> pb.JobSpec:
            resp = await self._stub.GetJobSpec(
                pb.GetJobSpecRequest(job_id=job_id),
                metadata=self._tokens.metadata(),
                timeout=deadline,
            )
            return resp.spec

        spec = await self.policy.call(f"GetJobSpec(job {job_id})", attempt, idempotent=True)
        if self.working_base_dir is not None:
            relocate(spec, self.working_base_dir)
        return spec

    async def stream_task_inputs(self, job_id: int, task_order: int) -> list[image_pb2.Image]:
        """Every input image of the task, in list order (the stream is restarted on retry)."""

        async def attempt(deadline: float) -> list[image_pb2.Image]:
            images: list[image_pb2.Image] = []
            stream = self._stub.StreamTaskInputs(
                pb.StreamTaskInputsRequest(job_id=job_id, task_order=task_order),
                metadata=self._tokens.metadata(),
                timeout=deadline,
            )
            async for resp in stream:
                images.extend(resp.images)
            return images

        return await self.policy.call(
            f"StreamTaskInputs(job {job_id}, task {task_order})",
            attempt,
            idempotent=True,
            attempt_seconds=BULK_ATTEMPT_SECONDS,
        )

    async def apply_task_result(
        self,
        job_id: int,
        task_order: int,
        output: pb.TaskOutput,
        calls: pb.CallCounts | None = None,
    ) -> pb.ApplyTaskResultResponse:
        request = pb.ApplyTaskResultRequest(
            job_id=job_id, task_order=task_order, output=output, calls=calls
        )

        async def attempt(deadline: float) -> pb.ApplyTaskResultResponse:
            resp: pb.ApplyTaskResultResponse = await self._stub.ApplyTaskResult(
                request, metadata=self._tokens.metadata(), timeout=deadline
            )
            return resp

        return await self.policy.call(
            f"ApplyTaskResult(job {job_id}, task {task_order})",
            attempt,
            idempotent=True,
            attempt_seconds=BULK_ATTEMPT_SECONDS,
        )

    async def report_task_progress(
        self, job_id: int, task_order: int, calls: pb.CallCounts
    ) -> bool:
        """One attempt (raises its RPC error); True when api applied the report."""
        resp = await self._stub.ReportTaskProgress(
            pb.ReportTaskProgressRequest(job_id=job_id, task_order=task_order, calls=calls),
            metadata=self._tokens.metadata(),
            timeout=PROGRESS_ATTEMPT_SECONDS,
        )
        return bool(resp.applied)

    async def finish_job(
        self,
        job_id: int,
        status: job_pb2.JobStatus.ValueType,
        log_text: str,
        failed_task_order: int | None = None,
        failed_task_calls: pb.CallCounts | None = None,
    ) -> job_pb2.Job:
        # A task's output may hold NUL characters, which api refuses (PostgreSQL cannot store them).
        log_text = log_text.replace("\x00", "\\0")
        request = pb.FinishJobRequest(job_id=job_id, status=status, log=log_text)
        if failed_task_order is not None:
            request.failed_task_order = failed_task_order
        if failed_task_calls is not None:
            request.failed_task_calls.CopyFrom(failed_task_calls)

        async def attempt(deadline: float) -> job_pb2.Job:
            resp = await self._stub.FinishJob(
                request, metadata=self._tokens.metadata(), timeout=deadline
            )
            return resp.job

        job = await self.policy.call(f"FinishJob(job {job_id})", attempt, idempotent=True)
        if self.on_finished is not None:
            self.on_finished(status)
        return job
