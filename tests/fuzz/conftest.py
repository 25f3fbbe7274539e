"""The fuzzed world: an api on a database of its own (so row counts are ours alone), its
listeners' RPCs from reflection, three principals, and real objects for the requests to name."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc.aio
import pytest
from fuzz_world import FuzzWorld, Principal
from rpcs import list_rpcs

from fractal.v2 import auth_service_pb2 as auth_pb2
from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient
from world import (
    RUN_ID,
    SESSION_TOKEN_SECONDS,
    create_database,
    delete_streams_async,
    drop_database,
    running_api,
)


async def _count_sql(db: asyncpg.Connection) -> str:
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'api'"
        " AND table_type = 'BASE TABLE' AND table_name NOT IN ('outbox', 'alembic_version')"
        " ORDER BY table_name"
    )
    return "SELECT " + ", ".join(f'(SELECT count(*) FROM api."{t["table_name"]}")' for t in tables)


@pytest.fixture(scope="session")
def fuzz_database_url() -> Iterator[str]:
    name = f"fractal_fuzz_{RUN_ID}"
    url = create_database(name)
    yield url
    drop_database(name)


async def _seed(client: ApiClient) -> dict[str, int]:
    """A project with a dataset of three images, a task, a one-task workflow and a job."""
    md = client.md
    me = (await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)).user
    project = await client.new_project()
    dataset = (
        await client.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project.id, name="d", zarr_dir=f"/fuzz/{secrets.token_hex(3)}"
            ),
            metadata=md,
        )
    ).dataset
    await client.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=project.id,
            dataset_id=dataset.id,
            images=[
                image_pb2.Image(zarr_url=f"{dataset.zarr_dir}/{i}", types={"3D": i % 2 == 0})
                for i in range(3)
            ],
        ),
        metadata=md,
    )
    task = (
        await client.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                name=f"t-{secrets.token_hex(3)}",
                source=f"s-{secrets.token_hex(3)}",
                command_non_parallel="python3 task.py",
            ),
            metadata=md,
        )
    ).task
    workflow = (
        await client.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
            metadata=md,
        )
    ).workflow
    wftask = (
        await client.workflows.CreateWorkflowTask(
            workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=project.id, workflow_id=workflow.id, task_id=task.id
            ),
            metadata=md,
        )
    ).workflow_task
    job = (
        await client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=project.id, workflow_id=workflow.id, dataset_id=dataset.id
            ),
            metadata=md,
        )
    ).job
    return {
        "user_id": me.id,
        "project_id": project.id,
        "dataset_id": dataset.id,
        "task_id": task.id,
        "workflow_id": workflow.id,
        "workflow_task_id": wftask.id,
        "job_id": job.id,
    }


@pytest.fixture(scope="session")
async def fuzz_world(
    service_env: dict[str, str], fuzz_database_url: str, nats_prefix: str, key_env: dict[str, str]
) -> AsyncIterator[FuzzWorld]:
    from fractal_grpc.auth.tokens import ServiceTokenSource

    prefix = f"{nats_prefix}fz"
    try:
        async with running_api(
            service_env, database_url=fuzz_database_url, nats_prefix=prefix
        ) as running:
            # Every listener of the api: reflection on each says what it serves.
            addresses = [running.address, running.internal_address]
            async with grpc.aio.insecure_channel(running.address) as channel:
                admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
                user = await admin.new_user(verified=True)
                key = Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text()
                service_md = ServiceTokenSource(
                    key, service="fuzz", lifetime=SESSION_TOKEN_SECONDS
                ).metadata()
                user_ids = await _seed(user)
                principals = [
                    Principal("user", user.md, user_ids),
                    Principal("superuser", admin.md, await _seed(admin)),
                    Principal("service", service_md, user_ids),
                ]
                # Reflection through a blocking channel: in a thread, the api runs on this loop.
                rpcs = await asyncio.to_thread(list_rpcs, addresses)
                db = await asyncpg.connect(fuzz_database_url.replace("+asyncpg", ""))
                try:
                    yield FuzzWorld(rpcs, principals, db, await _count_sql(db))
                finally:
                    await db.close()
    finally:
        await delete_streams_async(prefix)
