"""The runner's ``JobFolderService``: a job's live log and its folder as a zip, for api.

api never reads the runner's disk: it asks here. The folder is found by job id in the runner's
own working base directory (``fractal_grpc.jobfolder.find_job_folder``); api sends no path.
Replicas share that directory (deploy/k8s: a shared volume), so any replica answers for any job.
"""

from __future__ import annotations

import asyncio
import tempfile
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import grpc.aio

from fractal.internal.v1 import job_folder_service_pb2 as pb
from fractal.internal.v1 import job_folder_service_pb2_grpc as rpc
from fractal.internal.v1.job_execution_service_pb2 import JobSpec
from fractal_grpc.auth.principal import Access
from fractal_grpc.auth.tokens import (
    RUNNER_AUDIENCE,
    USER_AUDIENCE,
    TokenVerifier,
    unusable_public_key_pem,
)
from fractal_grpc.grpckit.auth import AuthInterceptor
from fractal_grpc.grpckit.errors import NotFound
from fractal_grpc.grpckit.interceptors import ErrorInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from fractal_grpc.grpckit.validation import ValidationInterceptor
from fractal_grpc.jobfolder import find_job_folder, job_id_of
from fractal_grpc.settings import RunnerSettings

SERVICE = "fractal.internal.v1.JobFolderService"
# The runner listener's access table: api's service tokens only.
ACCESS: dict[str, Access] = {
    f"/{SERVICE}/ReadJobLog": Access.INTERNAL,
    f"/{SERVICE}/DownloadJobFolder": Access.INTERNAL,
}
LOG_FILE = "workflow.log"
DEFAULT_LOG_BYTES = 1024 * 1024
CHUNK_BYTES = 256 * 1024
# A zip is built in memory up to this size, on disk beyond.
_SPOOL_BYTES = 8 * 1024 * 1024


def relocate(spec: JobSpec, working_base_dir: Path) -> None:
    """Place the spec's job folder in this runner's ``working_base_dir``, under the folder name
    api recorded (``fractal_grpc.jobfolder.job_folder_name``): the runner, not api, decides
    where on its storage a folder lives, and finds it there again by job id. A spec whose
    ``working_dir_user`` is the same folder follows it."""
    if not spec.working_dir:
        return
    name = PurePosixPath(spec.working_dir).name
    if job_id_of(name) != spec.job_id:
        return  # not a name of ours: left as is (execution refuses what it cannot use)
    local = str(working_base_dir.absolute() / name)
    if spec.working_dir_user == spec.working_dir:
        spec.working_dir_user = local
    spec.working_dir = local


def read_log_tail(path: Path, max_bytes: int) -> tuple[str, bool]:
    """The last ``max_bytes`` bytes of ``path`` as text, and whether the file was longer."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    return data.decode(errors="replace"), start > 0


def zip_folder(folder: Path, out: IO[bytes]) -> None:
    """Write a zip of ``folder`` to ``out``: every file and subfolder (empty ones too), with
    paths relative to the folder, each entry stamped with its own modification time (so the
    same folder always gives the same archive). Symlinks are not followed."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                continue
            if path.is_dir() or path.is_file():
                archive.write(path, relative)


class JobFolderServicer(rpc.JobFolderServiceServicer):
    def __init__(self, working_base_dir: Path) -> None:
        self.base = working_base_dir

    def _folder(self, job_id: int) -> Path:
        folder = find_job_folder(self.base, job_id)
        if folder is None:
            raise NotFound(f"Job {job_id} has no folder")
        return folder

    async def ReadJobLog(
        self, request: pb.ReadJobLogRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        folder = await asyncio.to_thread(self._folder, request.job_id)
        try:
            text, truncated = await asyncio.to_thread(
                read_log_tail, folder / LOG_FILE, request.max_bytes or DEFAULT_LOG_BYTES
            )
        except FileNotFoundError:
            raise NotFound(f"Job {request.job_id} has no {LOG_FILE} yet") from None
        return pb.ReadJobLogResponse(log=text, truncated=truncated)

    async def DownloadJobFolder(
        self, request: pb.DownloadJobFolderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadJobFolderResponse]:
        folder = await asyncio.to_thread(self._folder, request.job_id)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            await asyncio.to_thread(zip_folder, folder, spool)
            spool.seek(0)
            while chunk := await asyncio.to_thread(spool.read, CHUNK_BYTES):
                yield pb.DownloadJobFolderResponse(chunk=chunk)


def build_server(
    settings: RunnerSettings, observe: Sequence[grpc.aio.ServerInterceptor] = ()
) -> GrpcServer:
    """The runner's listener (FRACTAL_RUNNER_ADDRESS): health, reflection and JobFolderService,
    for api's runner-audience tokens only (a user token: PERMISSION_DENIED; anything else:
    UNAUTHENTICATED); malformed requests are refused like api's. ``observe``: the
    observability interceptors, outermost."""
    api_key = settings.api_public_key_pem() or unusable_public_key_pem()
    auth = AuthInterceptor(
        ACCESS,
        internal_verifier=TokenVerifier(api_key, audience=RUNNER_AUDIENCE),
        user_verifier=TokenVerifier(api_key, audience=USER_AUDIENCE),
    )
    server = GrpcServer(
        settings.runner_address,
        [*observe, ErrorInterceptor(), auth, ValidationInterceptor()],
        max_message_bytes=settings.runner_max_message_bytes,
    )
    server.add(
        rpc.add_JobFolderServiceServicer_to_server,
        JobFolderServicer(settings.runner_working_base_dir.absolute()),
        SERVICE,
    )
    return server
