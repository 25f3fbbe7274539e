"""The Python client: one method per public RPC, the service config's retry rules, errors with
their details, token refresh, and retries across a real api restart."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cli_helpers import ADMIN
from e2e_stack import Stack, kill, start

import fractal.v2
from fractal.v2 import (
    admin_service_pb2,
    auth_service_pb2,
    dataset_service_pb2,
    image_service_pb2,
    job_service_pb2,
    project_service_pb2,
    task_collection_service_pb2,
    task_service_pb2,
    user_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.client import (
    AlreadyExistsError,
    Client,
    ConflictError,
    Credential,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SyncClient,
    retried_methods,
    service_config,
)
from helpers import RequestRecorder

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"
PUBLIC_MODULES = [
    admin_service_pb2,
    task_collection_service_pb2,
    auth_service_pb2,
    user_service_pb2,
    project_service_pb2,
    dataset_service_pb2,
    image_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
    job_service_pb2,
]
READ_VERBS = ("Get", "List", "Query", "Export", "Watch", "Download", "Read", "Login")
#: Internal methods that are idempotent by design (README: one retry policy for internal calls).
INTERNAL_IDEMPOTENT = {
    "/fractal.internal.v1.JobExecutionService/GetJobSpec",
    "/fractal.internal.v1.JobExecutionService/StreamTaskInputs",
    "/fractal.internal.v1.JobExecutionService/ApplyTaskResult",
    "/fractal.internal.v1.JobExecutionService/FinishJob",
    "/fractal.internal.v1.JobFolderService/ReadJobLog",
    "/fractal.internal.v1.JobFolderService/DownloadJobFolder",
}


def public_methods() -> dict[str, Any]:
    """``/fractal.v2.Service/Method`` → method descriptor, for every public RPC."""
    found = {}
    for module in PUBLIC_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method
    return found


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_public_rpc_has_a_client_method_async_and_blocking() -> None:
    assert fractal.v2 is not None
    names = {snake(path.rsplit("/", 1)[1]) for path in public_methods()}
    assert len(names) == len(public_methods())
    missing = sorted(n for n in names if not hasattr(Client, n))
    assert missing == []
    missing = sorted(n for n in names if not hasattr(SyncClient, n))
    assert missing == []


def test_the_service_config_retries_only_reads_and_request_id_creates() -> None:
    public = public_methods()
    retried = retried_methods()
    for path in retried:
        if path in INTERNAL_IDEMPOTENT:
            continue
        method = public[path]  # a name that is not a real public method fails here
        verb = path.rsplit("/", 1)[1]
        has_request_id = "request_id" in method.input_type.fields_by_name
        assert verb.startswith(READ_VERBS) or has_request_id, path
    # Every read and every unary request_id create is retried; nothing else.
    for path, method in public.items():
        verb = path.rsplit("/", 1)[1]
        should = verb.startswith(READ_VERBS) or (
            "request_id" in method.input_type.fields_by_name and not method.client_streaming
        )
        assert (path in retried) == should, path
    # Every public service waits for the channel to be ready; retries are on UNAVAILABLE only.
    services = {
        n["service"]
        for e in service_config()["methodConfig"]
        for n in e["name"]
        if e.get("waitForReady")
    }
    assert {p.split("/")[1] for p in public} <= services
    for entry in service_config()["methodConfig"]:
        if "retryPolicy" in entry:
            assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def admin(stack: Stack, **kw: Any) -> Client:
    client = Client(stack.api_address, credential=Credential(*ADMIN), **kw)
    await client.login()
    return client


async def verified_user(stack: Stack) -> Client:
    email = f"client-{secrets.token_hex(4)}@example.org"
    async with await admin(stack) as root:
        user = await root.create_user(email, "pw-1234", username=email.split("@")[0])
        await root.update_user(user.id, is_verified=True)
    client = Client(stack.api_address, credential=Credential(email, "pw-1234"))
    return client


async def test_errors_carry_the_code_reason_and_fields(cli_stack: Stack, tmp_path: Path) -> None:
    async with await verified_user(cli_stack) as c:
        project = await c.create_project("errors")
        with pytest.raises(InvalidArgumentError) as bad:
            await c.create_dataset(project.id, "ds", "relative/zarr")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad.value.field_violations] == ["zarr_dir"]
        with pytest.raises(NotFoundError) as missing:
            await c.get_project(999_999)
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(AlreadyExistsError) as taken:
            await c.create_project("errors")
        assert taken.value.reason == "PROJECT_NAME_IN_USE"
        assert taken.value.metadata.get("field") == "name"
        with pytest.raises(PermissionDeniedError) as denied:
            await c.list_users()
        assert denied.value.reason == "SUPERUSER_REQUIRED"


async def test_a_refused_token_is_renewed_from_the_saved_credential(cli_stack: Stack) -> None:
    tokens: list[str] = []
    async with Client(
        cli_stack.api_address,
        "not-a-token",
        credential=Credential(*ADMIN),
        on_token=tokens.append,
    ) as c:
        me = await c.get_current_user()
        assert me.email == ADMIN[0]
        assert len(tokens) == 1 and c.token == tokens[0]
    # Without a credential the refusal is the caller's.
    async with Client(cli_stack.api_address, "not-a-token") as c:
        with pytest.raises(PermissionDeniedError) as refused:
            await c.get_current_user()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.reason == "INVALID_TOKEN"


def test_the_blocking_client(cli_stack: Stack, tmp_path: Path) -> None:
    with SyncClient(cli_stack.api_address, credential=Credential(*ADMIN)) as c:
        project = c.create_project(f"sync-{secrets.token_hex(3)}")
        assert c.get_project(project.id).name == project.name
        zarr_dir = tmp_path / "zarr"
        ds = c.create_dataset(project.id, "ds", str(zarr_dir))
        urls = [f"{zarr_dir}/p.zarr/A/0{i}/0" for i in range(3)]
        added = c.add_images(
            project.id, ds.id, [{"zarr_url": u, "attributes": {"i": 1}} for u in urls]
        )
        assert added == 3
        exported = list(c.export_dataset(project.id, ds.id))
        assert exported[0].image_count == 3
        assert [i.zarr_url for m in exported for i in m.images] == urls
        with pytest.raises(NotFoundError):
            c.get_dataset(project.id, ds.id + 1000)
    # A stream as the first call of a client (it opens the channel on the client's loop).
    with SyncClient(cli_stack.api_address, c.token) as fresh:
        assert sum(len(m.images) for m in fresh.export_dataset(project.id, ds.id)) == 3


async def _job_setup(c: Client, tmp_path: Path) -> tuple[int, int, int]:
    project = await c.create_project(f"retry-{secrets.token_hex(3)}")
    zarr_dir = tmp_path / "zarr"
    url = f"{zarr_dir}/p.zarr/A/01/0"
    Path(url).mkdir(parents=True)
    ds = await c.create_dataset(project.id, "ds", str(zarr_dir))
    await c.add_images(project.id, ds.id, [{"zarr_url": url}])
    task = await c.create_task(
        f"slow-{secrets.token_hex(3)}",
        f"slow-{secrets.token_hex(3)}",
        command_parallel=f"{sys.executable} {MOCK / 'generic_task_parallel.py'}",
    )
    wf = await c.create_workflow(project.id, "wf")
    await c.create_workflow_task(project.id, wf.id, task.id, args_parallel={"sleep_seconds": 4})
    return project.id, wf.id, ds.id


async def _restart_api_while(stack: Stack, call: asyncio.Task[Any]) -> Any:
    """Let ``call`` start against a dead api, then bring api back; the call's result."""
    await asyncio.sleep(1.0)
    assert not call.done(), "the call did not wait for api"
    await asyncio.to_thread(start, stack, "api")
    return await asyncio.wait_for(call, 60)


async def test_reads_and_submits_across_an_api_restart(cli_stack: Stack, tmp_path: Path) -> None:
    recorder = RequestRecorder()
    async with await verified_user(cli_stack) as user:
        pid, wid, did = await _job_setup(user, tmp_path)
    async with Client(
        cli_stack.api_address, credential=user.credential, interceptors=[recorder]
    ) as c:
        await c.login()
        # A read sent while api is down is answered once it is back.
        kill(cli_stack, "api", signal.SIGKILL)
        project = await _restart_api_while(cli_stack, asyncio.create_task(c.get_project(pid)))
        assert project.id == pid

        # A submit too, and it created one job: its request_id makes a resend harmless.
        kill(cli_stack, "api", signal.SIGKILL)
        job = await _restart_api_while(cli_stack, asyncio.create_task(c.submit_job(pid, wid, did)))
        sent = [r for r in recorder.requests if isinstance(r, job_service_pb2.SubmitJobRequest)]
        assert len(sent) == 1 and sent[0].request_id
        jobs = await c.list_jobs(pid, workflow_id=wid)
        assert [j.id for j in jobs.jobs] == [job.id]
        # The same request_id again (what gRPC resends on UNAVAILABLE) answers the same job ...
        again = await c.submit_job(pid, wid, did, request_id=sent[0].request_id)
        assert again.id == job.id
        # ... while a new submit is a new request, refused while the job runs.
        with pytest.raises(ConflictError) as refused:
            await c.submit_job(pid, wid, did)
        assert refused.value.reason == "DATASET_IN_USE"

        # A watch goes on across a restart and ends with the job.
        seen: list[int] = []
        async for update in c.watch_job(pid, job.id):
            seen.append(update.status)
            if len(seen) == 1:
                kill(cli_stack, "api", signal.SIGKILL)
                start(cli_stack, "api")
        assert seen[-1] == 2  # JOB_STATUS_DONE
        assert (await c.get_job(pid, job.id)).status == 2
