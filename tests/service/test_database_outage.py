"""PostgreSQL goes away (kill -9, then a restart on the same port): under a running api every
call answers UNAVAILABLE (or ABORTED) with RetryInfo while it is down — never INTERNAL — and
calls succeed again once it is back; under api and runner, a job whose task ends during the
outage waits, reports its result once PostgreSQL is back, and ends DONE without running the
task again. A database of its own (embedded), never the shared one."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_runner_execution import World, create_task, python_command

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import dataset_service_pb2, job_pb2, project_service_pb2, workflow_service_pb2
from fractal_devstack.embedded import EmbeddedPostgres
from fractal_grpc.settings import RunnerSettings
from fractal_runner.app import RunnerApp
from fractal_runner.leases import LeaseConfig
from helpers import ApiClient, admin_of
from waiting import wait_for_file
from world import delete_streams_async, running_api

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


@pytest.fixture
def pg_state() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="fractal-pg-outage-", dir="/tmp"))
    yield state
    shutil.rmtree(state, ignore_errors=True)


def migrated(pg: EmbeddedPostgres) -> str:
    from fractal_api.main import MIGRATIONS
    from fractal_grpc.migrate import upgrade
    from fractal_runner.main import MIGRATIONS as RUNNER_MIGRATIONS

    url = pg.start()
    upgrade(MIGRATIONS, url, "api")
    upgrade(RUNNER_MIGRATIONS, url, "runner")
    return url


def kill_server(pg: EmbeddedPostgres) -> None:
    """kill -9 of the postmaster; wait until its backends have noticed and exited too."""
    assert pg.pid is not None
    server = psutil.Process(pg.pid)
    children = server.children(recursive=True)
    server.kill()
    psutil.wait_procs([server, *children], timeout=30)


def retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds() / 1000
    return None


async def test_a_database_outage_is_retryable(
    pg_state: Path, service_env: dict[str, str], service_md: tuple[tuple[str, str], ...]
) -> None:
    pg = EmbeddedPostgres(pg_state, database="outage")
    url = await asyncio.to_thread(migrated, pg)
    port = pg.port
    restarted: list[EmbeddedPostgres] = []
    try:
        async with (
            running_api(service_env, database_url=url) as running,
            admin_of(running) as admin,
        ):
            project = await admin.new_project()

            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                # SQLAlchemy: a write transaction, and a read.
                "CreateProject": lambda: admin.projects.CreateProject(
                    project_service_pb2.CreateProjectRequest(name=f"p{time.monotonic_ns()}"),
                    metadata=admin.md,
                ),
                "GetProject": lambda: admin.projects.GetProject(
                    project_service_pb2.GetProjectRequest(project_id=project.id),
                    metadata=admin.md,
                ),
                # The raw asyncpg pool (the user lookup and the listing).
                "ListProjects": lambda: admin.projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(), metadata=admin.md
                ),
                # An internal RPC of the runner.
                "GetJobSpec": lambda: admin.internal.GetJobSpec(
                    ipb.GetJobSpecRequest(job_id=10**9), metadata=service_md
                ),
            }

            await asyncio.to_thread(kill_server, pg)
            # Each call twice: the first may meet a pooled connection that just broke, the
            # second finds no server to connect to.
            for name, call in [*calls.items(), *calls.items()]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                assert err.value.code() in RETRYABLE, (name, err.value.code(), err.value.details())
                delay = retry_delay(err.value)
                assert delay is not None and delay > 0, name
                assert "Error" not in (err.value.details() or ""), name

            restarted.append(EmbeddedPostgres(pg_state, database="outage", port=port))
            await asyncio.to_thread(restarted[0].start)

            # Back: each call succeeds after at most a few retryable answers.
            for name, call in calls.items():
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await call()
                        break
                    except grpc.aio.AioRpcError as exc:
                        if name == "GetJobSpec" and exc.code() == grpc.StatusCode.NOT_FOUND:
                            break  # answered: there is no such job
                        assert exc.code() in RETRYABLE, (name, exc.code(), exc.details())
                        assert time.monotonic() < deadline, f"{name} did not recover"
                        await asyncio.sleep(retry_delay(exc) or 0.1)
    finally:
        for server in restarted:
            await asyncio.to_thread(server.stop)
        await asyncio.to_thread(pg.stop)


async def test_a_job_waits_out_a_database_outage(
    pg_state: Path, service_env: dict[str, str], nats_prefix: str, tmp_path: Path
) -> None:
    """The task ends while PostgreSQL is down: its result report (and the runner's lease
    renewals) fail meanwhile; once the database is back the job ends DONE, the task having
    run once (before this issue the report answered INTERNAL and the job was run again or
    ended FAILED "UNKNOWN ERROR")."""
    pg = EmbeddedPostgres(pg_state, database="outage")
    url = await asyncio.to_thread(migrated, pg)
    port = pg.port
    prefix = f"{nats_prefix}pg"
    restarted: list[EmbeddedPostgres] = []
    invocations, started, go = tmp_path / "invocations", tmp_path / "started", tmp_path / "go"
    code = (
        "import os, time\n"
        f"open({str(invocations)!r}, 'a').write('start\\n')\n"
        f"open({str(started)!r}, 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        f"open({str(invocations)!r}, 'a').write('end\\n')\n"
    )
    try:
        async with (
            running_api(service_env, database_url=url, nats_prefix=prefix) as running,
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
            env.update(
                database_url=url,
                nats_prefix=prefix,
                api_url=running.internal_address,
                runner_address="127.0.0.1:0",
                grace_seconds=0.5,
                runner_working_base_dir=str(tmp_path / "jobs"),
            )
            runner = RunnerApp(RunnerSettings(**env), lease=LeaseConfig.of(120))
            await runner.start()
            try:
                admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
                user = await admin.new_user()
                project = await user.new_project()
                ds = await user.datasets.CreateDataset(
                    dataset_service_pb2.CreateDatasetRequest(
                        project_id=project.id, name="ds", zarr_dir=str(tmp_path / "zarr")
                    ),
                    metadata=user.md,
                )
                wf = await user.workflows.CreateWorkflow(
                    workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
                    metadata=user.md,
                )
                world = World(user, project.id, ds.dataset.id, wf.workflow.id, str(tmp_path))
                task = await create_task(
                    user, "waiter", non_parallel=python_command(code), output_types={"x": True}
                )
                await world.add_task(task)
                job = await world.submit()
                await wait_for_file(started, 30)

                await asyncio.to_thread(kill_server, pg)
                go.touch()
                await wait_for_file(invocations, 30)
                while invocations.read_text().count("end") < 1:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # let the runner's report meet the outage
                restarted.append(EmbeddedPostgres(pg_state, database="outage", port=port))
                await asyncio.to_thread(restarted[0].start)

                ended = await world.wait(job.id, timeout=120)
                assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
                assert invocations.read_text() == "start\nend\n"
                assert await world.history() == [(0, "done")]
            finally:
                await runner.stop()
    finally:
        for server in restarted:
            await asyncio.to_thread(server.stop)
        await asyncio.to_thread(pg.stop)
        await delete_streams_async(prefix)
