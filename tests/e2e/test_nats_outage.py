"""Fault injection: NATS goes away. Submissions still commit (the outbox keeps the command),
watchers still see the job end (by re-reading it), and the command reaches JetStream once NATS
is back."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import nats
import pytest

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_devstack.embedded import EmbeddedNats
from helpers import admin_of
from world import running_api


async def test_jobs_survive_a_nats_outage(
    service_env: dict[str, str], service_md: tuple[tuple[str, str], ...], nats_prefix: str
) -> None:
    state = Path(tempfile.mkdtemp(prefix="fractal-nats-outage-", dir="/tmp"))
    server = EmbeddedNats(state)
    url = server.start()
    port = server.port
    prefix = f"{nats_prefix}o"
    servers = [server]
    try:
        async with (
            running_api(service_env, nats_url=url, nats_prefix=prefix) as running,
            admin_of(running) as admin,
        ):
            user = await admin.new_user()
            project = await user.new_project()
            ds = await user.datasets.CreateDataset(
                dataset_service_pb2.CreateDatasetRequest(
                    project_id=project.id, name="d", zarr_dir="/zarr"
                ),
                metadata=user.md,
            )
            task = await user.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    name="t", source="outage", command_non_parallel="/bin/true"
                ),
                metadata=user.md,
            )
            wf = await user.workflows.CreateWorkflow(
                workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
                metadata=user.md,
            )
            await user.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=project.id, workflow_id=wf.workflow.id, task_id=task.task.id
                ),
                metadata=user.md,
            )

            server.stop()  # NATS is gone
            submitted = await user.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
                ),
                metadata=user.md,
            )
            job_id = submitted.job.id

            async def watch() -> list[job_pb2.Job]:
                states = []
                async for update in user.jobs.WatchJob(
                    job_service_pb2.WatchJobRequest(project_id=project.id, job_id=job_id),
                    metadata=user.md,
                ):
                    states.append(update.job)
                return states

            watcher = asyncio.ensure_future(watch())
            await asyncio.sleep(0.5)
            # The runner's report reaches api over gRPC, not NATS.
            await user.internal.FinishJob(
                ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
                metadata=service_md,
            )
            states = await asyncio.wait_for(watcher, 15)
            assert states[0].status == job_pb2.JOB_STATUS_SUBMITTED
            assert states[-1].status == job_pb2.JOB_STATUS_DONE

            # NATS comes back on the same port: the outbox relay delivers the command.
            servers.append(EmbeddedNats(state, port=port))
            servers[-1].start()
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                for _ in range(100):
                    try:
                        info = await js.stream_info(f"{prefix.upper()}_CMD")
                        if info.state.messages >= 1:
                            break
                    except Exception:  # noqa: BLE001 - the stream appears with the api's reconnect
                        pass
                    await asyncio.sleep(0.2)
                else:
                    pytest.fail("the submit command never reached JetStream")
            finally:
                await nc.close()
    finally:
        for started in servers:
            started.stop()
        shutil.rmtree(state, ignore_errors=True)
