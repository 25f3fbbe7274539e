"""api's client of the runner's ``JobFolderService``: job logs and folder downloads come from the
runner that owns the folder (``FRACTAL_RUNNER_URL``), never from api's own disk.

Calls carry a runner-audience service token signed with api's key (the runner verifies it with
api's public key). A runner that cannot be reached (or answers with anything but the folder or
NOT_FOUND, e.g. a key mismatch) is UNAVAILABLE with RetryInfo for the client; a job without a
folder is NOT_FOUND. The channel has the clients' one service config
(``protos/service_config.json``): both reads are resent by gRPC on UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio

import fractal_grpc.client
from fractal.internal.v1 import job_folder_service_pb2 as pb
from fractal.internal.v1 import job_folder_service_pb2_grpc as rpc
from fractal_grpc.auth.tokens import RUNNER_AUDIENCE, ServiceTokenSource
from fractal_grpc.grpckit.errors import DomainError, NotFound, Unavailable

log = logging.getLogger("fractal.api.runner")

# A log read is small and quick; a download streams for as long as it takes.
LOG_DEADLINE_SECONDS = 10.0
RETRY_DELAY_SECONDS = 1.0
# The runner sends chunks of 256 KiB and logs of at most 1 MiB.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024


class RunnerFolders:
    def __init__(self, runner_url: str, private_key_pem: str) -> None:
        self.runner_url = runner_url
        self._tokens = ServiceTokenSource(private_key_pem, service="api", audience=RUNNER_AUDIENCE)
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> rpc.JobFolderServiceStub:
        if self._channel is None:  # opened on first use, inside the running event loop
            self._channel = fractal_grpc.client.open_channel(
                self.runner_url, max_message_bytes=MAX_MESSAGE_BYTES
            )
        return rpc.JobFolderServiceStub(self._channel)

    def _error(self, job_id: int, exc: grpc.aio.AioRpcError) -> DomainError:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return NotFound(f"Job {job_id} has no folder yet")
        log.warning("runner %s: %s %s", self.runner_url, exc.code().name, exc.details())
        return Unavailable(
            "the runner that holds job folders cannot be reached; try again",
            retry_delay=RETRY_DELAY_SECONDS,
            reason="RUNNER_UNAVAILABLE",
        )

    async def read_log(self, job_id: int) -> str | None:
        """The job's workflow.log (its last MiB), or None when it has none yet."""
        try:
            resp = await self._stub().ReadJobLog(
                pb.ReadJobLogRequest(job_id=job_id),
                metadata=self._tokens.metadata(),
                timeout=LOG_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            error = self._error(job_id, exc)
            if isinstance(error, NotFound):
                return None
            raise error from None
        return str(resp.log)

    async def download(self, job_id: int) -> AsyncIterator[bytes]:
        """The chunks of the zip of the job's folder."""
        call = self._stub().DownloadJobFolder(
            pb.DownloadJobFolderRequest(job_id=job_id), metadata=self._tokens.metadata()
        )
        try:
            async for resp in call:
                yield resp.chunk
        except grpc.aio.AioRpcError as exc:
            raise self._error(job_id, exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
