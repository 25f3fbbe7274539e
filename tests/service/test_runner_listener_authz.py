"""The runner's listener (FRACTAL_RUNNER_ADDRESS), as the authorization matrix does api's: every
RPC server reflection lists there × every kind of caller → the expected code. Only api's
runner-audience service tokens pass; a user token (even a superuser's) is PERMISSION_DENIED;
no token, a forged or expired one, the runner's own service token, or an api token for another
audience: UNAUTHENTICATED. Hostile requests with api's token never answer INTERNAL/UNKNOWN."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf.message import Message
from test_authz_matrix import call
from test_listeners_and_streams import listed_services

from fractal.internal.v1 import job_folder_service_pb2 as fpb
from fractal_grpc.auth.tokens import INTERNAL_AUDIENCE, RUNNER_AUDIENCE, ServiceTokenSource
from fractal_grpc.jobfolder import job_folder_name
from fractal_runner.job_folders import ACCESS
from helpers import ApiClient
from world import RunnerListener

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED

JOB_ID = 990_001  # a job folder of this test only
SERVICE = "/fractal.internal.v1.JobFolderService/"
REQUESTS: dict[str, Callable[[], Message]] = {
    f"{SERVICE}ReadJobLog": lambda: fpb.ReadJobLogRequest(job_id=JOB_ID),
    f"{SERVICE}DownloadJobFolder": lambda: fpb.DownloadJobFolderRequest(job_id=JOB_ID),
}


def _key(key_env: dict[str, str], name: str) -> str:
    return Path(key_env[f"FRACTAL_{name}_FILE"]).read_text()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def callers(key_env: dict[str, str], admin: ApiClient) -> dict[str, tuple[Any, grpc.StatusCode]]:
    """Each caller's metadata and the code it must get."""
    api_key = _key(key_env, "JWT_PRIVATE_KEY")
    now = int(time.time())
    claims = {"sub": "service:api", "aud": RUNNER_AUDIENCE, "iat": now, "exp": now + 300}
    other = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    runner_key = _key(key_env, "SERVICE_PRIVATE_KEY")
    return {
        "api": (
            ServiceTokenSource(api_key, service="api", audience=RUNNER_AUDIENCE).metadata(),
            OK,
        ),
        "no token": ((), UNAUTHENTICATED),
        "garbage": (_bearer("garbage"), UNAUTHENTICATED),
        "alg=none": (_bearer(jwt.encode(claims, None, algorithm="none")), UNAUTHENTICATED),
        "other key": (_bearer(jwt.encode(claims, other, algorithm="EdDSA")), UNAUTHENTICATED),
        "expired": (
            _bearer(jwt.encode({**claims, "exp": now - 10}, api_key, algorithm="EdDSA")),
            UNAUTHENTICATED,
        ),
        "api token for api's internal audience": (
            ServiceTokenSource(api_key, service="api", audience=INTERNAL_AUDIENCE).metadata(),
            UNAUTHENTICATED,
        ),
        "runner service token": (
            ServiceTokenSource(runner_key, service="runner").metadata(),
            UNAUTHENTICATED,
        ),
        "user": (admin.md, PERMISSION_DENIED),
    }


async def test_runner_listener_accepts_only_api_tokens(
    runner_listener: RunnerListener, runnerless_admin: ApiClient, key_env: dict[str, str]
) -> None:
    listed = await listed_services(runner_listener.address)
    methods = sorted(m for m in ACCESS if any(m.startswith(f"/{service}/") for service in listed))
    served = {s for s in listed if not s.startswith("grpc.")}
    assert served == {"fractal.internal.v1.JobFolderService"}
    assert sorted(REQUESTS) == sorted(ACCESS) == methods
    folder = runner_listener.base_dir / job_folder_name(1, 2, JOB_ID, datetime.now(UTC))
    (folder / "0_task").mkdir(parents=True)
    (folder / "workflow.log").write_text("line\n")
    wrong = []
    async with grpc.aio.insecure_channel(runner_listener.address) as channel:
        for method in methods:
            for caller, (md, want) in callers(key_env, runnerless_admin).items():
                got = await call(channel, method, REQUESTS[method](), md)
                if got != want:
                    wrong.append(f"{method} as {caller}: {got.name}, expected {want.name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "request_",
    [
        fpb.ReadJobLogRequest(job_id=0),
        fpb.ReadJobLogRequest(job_id=-5),
        fpb.ReadJobLogRequest(job_id=1, max_bytes=-1),
        fpb.ReadJobLogRequest(job_id=1, max_bytes=2**31 - 1),
        fpb.ReadJobLogRequest(job_id=2**63 - 1),
        fpb.DownloadJobFolderRequest(job_id=0),
        fpb.DownloadJobFolderRequest(job_id=2**63 - 1),
    ],
)
async def test_runner_listener_refuses_bad_requests_cleanly(
    runner_listener: RunnerListener, key_env: dict[str, str], request_: Message
) -> None:
    api_key = _key(key_env, "JWT_PRIVATE_KEY")
    md = ServiceTokenSource(api_key, service="api", audience=RUNNER_AUDIENCE).metadata()
    method = SERVICE + (
        "ReadJobLog" if isinstance(request_, fpb.ReadJobLogRequest) else "DownloadJobFolder"
    )
    async with grpc.aio.insecure_channel(runner_listener.address) as channel:
        got = await call(channel, method, request_, md)
    assert got in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), got
