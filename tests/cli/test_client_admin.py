"""The client's AdminService methods, GetWorkflowStatus and UpdateCurrentUser against the CLI
suite's api and runner: a job run by a user, then seen and handled by a superuser."""

from __future__ import annotations

import io
import secrets
import sys
import zipfile
from pathlib import Path

import grpc
import pytest
from cli_helpers import ADMIN
from e2e_stack import Stack
from test_client import admin, verified_user

from fractal.v2 import admin_pb2, job_pb2
from fractal_grpc.client import ConflictError, Credential, PermissionDeniedError, SyncClient

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"


async def test_admin_methods_see_and_handle_another_users_job(
    cli_stack: Stack, tmp_path: Path
) -> None:
    suffix = secrets.token_hex(3)
    async with await verified_user(cli_stack) as user:
        me = await user.update_current_user(
            cache_dir=str(tmp_path / "cache"), slurm_accounts=["a1"]
        )
        assert me.cache_dir == str(tmp_path / "cache") and list(me.slurm_accounts) == ["a1"]
        assert (await user.get_current_user()).cache_dir == me.cache_dir
        # Only the fields given change.
        again = await user.update_current_user(slurm_accounts=[])
        assert again.cache_dir == me.cache_dir and list(again.slurm_accounts) == []

        project = await user.create_project(f"admin-{suffix}")
        zarr_dir = tmp_path / "zarr"
        url = f"{zarr_dir}/p.zarr/A/01/0"
        Path(url).mkdir(parents=True)
        ds = await user.create_dataset(project.id, "ds", str(zarr_dir))
        await user.add_images(project.id, ds.id, [{"zarr_url": url}])
        task = await user.create_task(
            f"adm-{suffix}",
            f"adm-{suffix}",
            command_parallel=f"{sys.executable} {MOCK / 'generic_task_parallel.py'}",
        )
        wf = await user.create_workflow(project.id, "wf")
        wft = await user.create_workflow_task(project.id, wf.id, task.id)
        submitted = await user.submit_job(project.id, wf.id, ds.id)
        job = submitted
        async for update in user.watch_job(project.id, submitted.id):
            job = update
        assert job.status == job_pb2.JOB_STATUS_DONE
        status = await user.get_workflow_status(project.id, wf.id, ds.id)
        assert status.running_job_id == 0
        assert [(s.workflow_task_id, s.state) for s in status.statuses] == [
            (wft.id, job_pb2.TASK_STATE_DONE)
        ]
        # Not a superuser: every admin method is refused.
        with pytest.raises(PermissionDeniedError) as denied:
            await user.list_all_jobs()
        assert denied.value.reason == "SUPERUSER_REQUIRED"
        user_id = me.id

    async with await admin(cli_stack) as root:
        projects = await root.list_all_projects(user_id=user_id)
        assert [p.id for p in projects.projects] == [project.id]
        only = await root.list_all_projects(project_id=project.id)
        assert [p.name for p in only.projects] == [project.name]
        jobs = await root.list_all_jobs(project_id=project.id)
        assert [j.id for j in jobs.jobs] == [job.id] and jobs.jobs[0].log == ""
        logged = await root.list_all_jobs(project_id=project.id, include_logs=True)
        assert [j.id for j in logged.jobs] == [job.id] and logged.jobs[0].log
        none = await root.list_all_jobs(project_id=project.id, status=job_pb2.JOB_STATUS_FAILED)
        assert list(none.jobs) == []
        assert (await root.get_any_job(job.id)).status == job_pb2.JOB_STATUS_DONE
        # An ended job can be neither marked failed nor stopped.
        for call in (root.mark_job_failed, root.stop_any_job):
            with pytest.raises(ConflictError) as ended:
                await call(job.id)
            assert ended.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert ended.value.reason == "JOB_ALREADY_ENDED"
        archive = b"".join([chunk async for chunk in root.download_any_job_folder(job.id)])
        assert zipfile.ZipFile(io.BytesIO(archive)).namelist()
        found = await root.query_tasks(task_id=task.id, kind=admin_pb2.ADMIN_TASK_KIND_USERS)
        assert [t.task.id for t in found.tasks] == [task.id]
        assert [r.workflow_id for r in found.tasks[0].relationships] == [wf.id]
        settings = await root.get_settings()
        assert settings and all(k.startswith("FRACTAL_") for k in settings)

    # The blocking client: a unary admin call and a stream.
    with SyncClient(cli_stack.api_address, credential=Credential(*ADMIN)) as c:
        assert c.get_any_job(job.id).id == job.id
        assert b"".join(c.download_any_job_folder(job.id)) == archive
        assert c.get_settings() == settings
