"""AdminService (reference §3.3, §3.0 settings) against a real api, Postgres and a runner's
listener: a superuser sees and acts on every user's projects, jobs and tasks."""

from __future__ import annotations

import io
import secrets
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2
from test_images_jobs_api import make_task

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import admin_pb2, auth_service_pb2, job_pb2, job_service_pb2, project_service_pb2
from fractal.v2 import admin_service_pb2 as apb
from fractal.v2 import dataset_service_pb2 as dpb
from fractal.v2 import workflow_service_pb2 as wpb
from fractal_grpc.jobfolder import job_folder_name
from helpers import ApiClient, error_details
from world import RunnerListener

SUBMITTED, DONE, FAILED = (
    job_pb2.JOB_STATUS_SUBMITTED,
    job_pb2.JOB_STATUS_DONE,
    job_pb2.JOB_STATUS_FAILED,
)


def _tag() -> str:
    return secrets.token_hex(4)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


@dataclass
class Owner:
    client: ApiClient
    user_id: int
    project_id: int
    workflow_id: int
    task_id: int
    tag: str

    async def dataset(self) -> int:
        ds = await self.client.datasets.CreateDataset(
            dpb.CreateDatasetRequest(
                project_id=self.project_id, name=f"d-{_tag()}", zarr_dir=f"/zarr/{_tag()}"
            ),
            metadata=self.client.md,
        )
        return ds.dataset.id

    async def submit(self, dataset_id: int | None = None) -> job_pb2.Job:
        resp = await self.client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.project_id,
                workflow_id=self.workflow_id,
                dataset_id=dataset_id or await self.dataset(),
            ),
            metadata=self.client.md,
        )
        return resp.job


async def _owner(admin: ApiClient) -> Owner:
    client = await admin.new_user()
    me = await client.auth.GetCurrentUser(
        auth_service_pb2.GetCurrentUserRequest(), metadata=client.md
    )
    tag = _tag()
    project = await client.new_project(f"p-{tag}")
    task_id = await make_task(client, f"admin-task-{tag}", command_non_parallel="/bin/true")
    wf = await client.workflows.CreateWorkflow(
        wpb.CreateWorkflowRequest(project_id=project.id, name=f"wf-{tag}"), metadata=client.md
    )
    await client.workflows.CreateWorkflowTask(
        wpb.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wf.workflow.id, task_id=task_id
        ),
        metadata=client.md,
    )
    return Owner(client, me.user.id, project.id, wf.workflow.id, task_id, tag)


async def _all_jobs(admin: ApiClient, page_size: int = 0, **filters: object) -> list[job_pb2.Job]:
    found: list[job_pb2.Job] = []
    token = ""
    while True:
        page = await admin.admin.ListAllJobs(
            apb.ListAllJobsRequest(page_size=page_size, page_token=token, **filters),  # type: ignore[arg-type]
            metadata=admin.md,
        )
        found += page.jobs
        token = page.next_page_token
        if not token:
            return found


async def _refused(call: object, code: grpc.StatusCode) -> tuple[str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    info, fields = error_details(err.value)
    return (info.reason if info else ""), fields


async def test_list_all_projects_with_filters_and_pages(runnerless_admin: ApiClient) -> None:
    admin = runnerless_admin
    a, b = await _owner(admin), await _owner(admin)
    extra = [await a.client.new_project(f"more-{_tag()}") for _ in range(3)]
    mine = await admin.admin.ListAllProjects(
        apb.ListAllProjectsRequest(user_id=a.user_id), metadata=admin.md
    )
    assert [p.id for p in mine.projects] == [a.project_id, *(p.id for p in extra)]
    one = await admin.admin.ListAllProjects(
        apb.ListAllProjectsRequest(project_id=b.project_id), metadata=admin.md
    )
    assert [p.name for p in one.projects] == [f"p-{b.tag}"]
    both = await admin.admin.ListAllProjects(
        apb.ListAllProjectsRequest(project_id=b.project_id, user_id=a.user_id), metadata=admin.md
    )
    assert not both.projects
    seen: list[int] = []
    token = ""
    while True:
        page = await admin.admin.ListAllProjects(
            apb.ListAllProjectsRequest(user_id=a.user_id, page_size=2, page_token=token),
            metadata=admin.md,
        )
        seen += [p.id for p in page.projects]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.id for p in mine.projects]
    # A token belongs to its query.
    first = await admin.admin.ListAllProjects(
        apb.ListAllProjectsRequest(user_id=a.user_id, page_size=1), metadata=admin.md
    )
    await _refused(
        admin.admin.ListAllProjects(
            apb.ListAllProjectsRequest(
                user_id=b.user_id, page_size=1, page_token=first.next_page_token
            ),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_list_all_jobs_filters(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    admin = runnerless_admin
    a, b = await _owner(admin), await _owner(admin)
    before = datetime.now(UTC) - timedelta(seconds=1)
    dataset = await a.dataset()
    j1 = await a.submit(dataset)
    j2 = await a.submit()
    j3 = await b.submit()
    await admin.internal.FinishJob(
        ipb.FinishJobRequest(job_id=j1.id, status=DONE, log="all good"), metadata=service_md
    )
    after = datetime.now(UTC) + timedelta(seconds=1)

    async def ids(**filters: object) -> list[int]:
        return [j.id for j in await _all_jobs(admin, **filters)]

    assert await ids(user_id=a.user_id) == [j2.id, j1.id]  # newest first
    assert await ids(project_id=b.project_id) == [j3.id]
    assert await ids(job_id=j2.id) == [j2.id]
    assert await ids(dataset_id=dataset) == [j1.id]
    assert await ids(workflow_id=a.workflow_id, status=DONE) == [j1.id]
    assert await ids(user_id=a.user_id, status=SUBMITTED) == [j2.id]
    assert await ids(user_id=a.user_id, start_time_min=_ts(before), start_time_max=_ts(after)) == [
        j2.id,
        j1.id,
    ]
    assert await ids(user_id=a.user_id, start_time_min=_ts(after)) == []
    # Only ended jobs have an end time.
    assert await ids(user_id=a.user_id, end_time_min=_ts(before)) == [j1.id]
    assert await ids(user_id=a.user_id, end_time_max=_ts(before)) == []
    # Pages of one job each: every job once.
    assert [j.id for j in await _all_jobs(admin, page_size=1, user_id=a.user_id)] == [
        j2.id,
        j1.id,
    ]
    # Light by default, as JobService.ListJobs: the log only when asked for.
    light = await _all_jobs(admin, job_id=j1.id)
    assert [(j.id, j.log) for j in light] == [(j1.id, "")]
    assert light[0].task_statuses and light[0].project_dump  # the rest is all there
    full = await _all_jobs(admin, job_id=j1.id, include_logs=True)
    assert [(j.id, j.log) for j in full] == [(j1.id, "all good")]
    _, fields = await _refused(
        admin.admin.ListAllJobs(
            apb.ListAllJobsRequest(start_time_min=_ts(after), start_time_max=_ts(before)),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == ["start_time_min"]
    _, fields = await _refused(
        admin.admin.ListAllJobs(
            apb.ListAllJobsRequest(end_time_max=timestamp_pb2.Timestamp(seconds=10**15)),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == ["end_time_max"]


async def test_mark_job_failed_only_from_submitted(
    runnerless_admin: ApiClient, service_md: tuple[tuple[str, str], ...]
) -> None:
    admin = runnerless_admin
    a = await _owner(admin)
    stuck = await a.submit()
    watch = a.client.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(project_id=a.project_id, job_id=stuck.id),
        metadata=a.client.md,
        timeout=30,
    )
    assert (await watch.read()).job.status == SUBMITTED
    failed = (
        await admin.admin.MarkJobFailed(
            apb.MarkJobFailedRequest(job_id=stuck.id), metadata=admin.md
        )
    ).job
    assert failed.status == FAILED and failed.HasField("end_time")
    assert "marked as failed by a superuser" in failed.log
    # The owner's open watch sees the change and ends.
    assert (await watch.read()).job.status == FAILED
    assert await watch.read() is grpc.aio.EOF
    # The owner sees it too; the dataset history is not touched.
    got = await a.client.jobs.GetJob(
        job_service_pb2.GetJobRequest(project_id=a.project_id, job_id=stuck.id),
        metadata=a.client.md,
    )
    assert got.job.status == FAILED
    ds = await a.client.datasets.GetDataset(
        dpb.GetDatasetRequest(project_id=a.project_id, dataset_id=stuck.dataset_id),
        metadata=a.client.md,
    )
    assert not ds.dataset.history
    # The dataset is free again: a new job can be submitted on it.
    assert (await a.submit(stuck.dataset_id)).status == SUBMITTED
    reason, _ = await _refused(
        admin.admin.MarkJobFailed(apb.MarkJobFailedRequest(job_id=stuck.id), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason == "JOB_ALREADY_ENDED"
    done = await a.submit()
    await admin.internal.FinishJob(
        ipb.FinishJobRequest(job_id=done.id, status=DONE, log="ok"), metadata=service_md
    )
    await _refused(
        admin.admin.MarkJobFailed(apb.MarkJobFailedRequest(job_id=done.id), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    again = await admin.admin.GetAnyJob(apb.GetAnyJobRequest(job_id=done.id), metadata=admin.md)
    assert again.job.status == DONE
    await _refused(
        admin.admin.MarkJobFailed(apb.MarkJobFailedRequest(job_id=10**12), metadata=admin.md),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_get_stop_and_download_any_job(
    runnerless_admin: ApiClient, runner_listener: RunnerListener
) -> None:
    admin = runnerless_admin
    a = await _owner(admin)
    job = await a.submit()
    folder = runner_listener.base_dir / job_folder_name(
        a.project_id, a.workflow_id, job.id, datetime.now(UTC)
    )
    (folder / "0_task").mkdir(parents=True)
    (folder / "workflow.log").write_text("step one\n")
    (folder / "0_task" / "out.json").write_text("{}")
    got = await admin.admin.GetAnyJob(
        apb.GetAnyJobRequest(job_id=job.id, show_tmp_logs=True), metadata=admin.md
    )
    assert got.job.id == job.id and got.job.log == "step one\n"
    plain = await admin.admin.GetAnyJob(apb.GetAnyJobRequest(job_id=job.id), metadata=admin.md)
    assert plain.job.log == ""
    chunks = [
        r.chunk
        async for r in admin.admin.DownloadAnyJobFolder(
            apb.DownloadAnyJobFolderRequest(job_id=job.id), metadata=admin.md
        )
    ]
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.read("workflow.log") == b"step one\n"
        assert archive.read("0_task/out.json") == b"{}"
    stopped = await admin.admin.StopAnyJob(apb.StopAnyJobRequest(job_id=job.id), metadata=admin.md)
    assert stopped.job.id == job.id
    await admin.admin.MarkJobFailed(apb.MarkJobFailedRequest(job_id=job.id), metadata=admin.md)
    reason, _ = await _refused(
        admin.admin.StopAnyJob(apb.StopAnyJobRequest(job_id=job.id), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason == "JOB_ALREADY_ENDED"
    for call in (
        admin.admin.GetAnyJob(apb.GetAnyJobRequest(job_id=10**12), metadata=admin.md),
        admin.admin.StopAnyJob(apb.StopAnyJobRequest(job_id=10**12), metadata=admin.md),
    ):
        await _refused(call, grpc.StatusCode.NOT_FOUND)
    other = await a.submit()  # no folder yet
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in admin.admin.DownloadAnyJobFolder(
            apb.DownloadAnyJobFolderRequest(job_id=other.id), metadata=admin.md
        ):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_query_tasks_with_relationships_and_limit(runnerless_admin: ApiClient) -> None:
    admin = runnerless_admin
    a = await _owner(admin)
    # A second workflow, in a second project of the same user, uses the task too.
    p2 = await a.client.new_project(f"p2-{a.tag}")
    wf2 = await a.client.workflows.CreateWorkflow(
        wpb.CreateWorkflowRequest(project_id=p2.id, name="wf2"), metadata=a.client.md
    )
    for _ in range(2):  # twice in one workflow: still one relationship
        await a.client.workflows.CreateWorkflowTask(
            wpb.CreateWorkflowTaskRequest(
                project_id=p2.id, workflow_id=wf2.workflow.id, task_id=a.task_id
            ),
            metadata=a.client.md,
        )
    unused = await make_task(a.client, f"unused-{a.tag}", command_non_parallel="/bin/true")
    resp = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(source=f"ADMIN-TASK-{a.tag}".upper()), metadata=admin.md
    )
    assert [t.task.id for t in resp.tasks] == [a.task_id]
    info = resp.tasks[0]
    assert not info.task.HasField("args_schema_non_parallel")
    rels = [(r.workflow_id, r.project_id, r.project_name) for r in info.relationships]
    assert rels == [(a.workflow_id, a.project_id, f"p-{a.tag}"), (wf2.workflow.id, p2.id, p2.name)]
    assert [(u.id, u.email) for u in info.relationships[0].project_users] == [
        (a.user_id, a.client.email)
    ]
    by_name = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(name=a.tag, kind=admin_pb2.ADMIN_TASK_KIND_USERS), metadata=admin.md
    )
    assert {t.task.id for t in by_name.tasks} == {a.task_id, unused}
    assert not next(t for t in by_name.tasks if t.task.id == unused).relationships
    common = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(name=a.tag, kind=admin_pb2.ADMIN_TASK_KIND_COMMON), metadata=admin.md
    )
    assert not common.tasks  # custom tasks have an owner
    owner = by_name.tasks[0].task.owner
    assert owner
    exact = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(owner=owner, task_id=unused), metadata=admin.md
    )
    assert [t.task.id for t in exact.tasks] == [unused]
    # A LIKE wildcard matches itself only ("_" would match the "-" of "admin-task-").
    assert not (
        await admin.admin.QueryTasks(
            apb.QueryTasksRequest(name=f"admin_task-{a.tag}"), metadata=admin.md
        )
    ).tasks
    # More matches than allowed: refused as a whole, naming the count.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.admin.QueryTasks(
            apb.QueryTasksRequest(name=a.tag, max_number_of_results=1), metadata=admin.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info_, _ = error_details(err.value)
    assert info_ is not None and info_.reason == "TOO_MANY_RESULTS"
    assert info_.metadata["count"] == "2"
    # Pages within the limit: each task once.
    first = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(name=a.tag, page_size=1), metadata=admin.md
    )
    second = await admin.admin.QueryTasks(
        apb.QueryTasksRequest(name=a.tag, page_size=1, page_token=first.next_page_token),
        metadata=admin.md,
    )
    assert [t.task.id for t in (*first.tasks, *second.tasks)] == sorted([a.task_id, unused])
    assert not second.next_page_token


async def test_settings_are_shown_with_secrets_masked(
    runnerless_admin: ApiClient, key_env: dict[str, str]
) -> None:
    resp = await runnerless_admin.admin.GetSettings(
        apb.GetSettingsRequest(), metadata=runnerless_admin.md
    )
    settings = dict(resp.settings)
    assert settings["FRACTAL_DEFAULT_ADMIN_PASSWORD"] == "***"
    assert settings["FRACTAL_DEFAULT_ADMIN_EMAIL"] == "admin@fractal.xy"
    assert settings["FRACTAL_RUNNER_BACKEND"] == "local"
    assert "FRACTAL_DATABASE_URL" in settings and "FRACTAL_JWT_EXPIRE_SECONDS" in settings
    private = [v for k, v in key_env.items() if "PRIVATE" in k]
    texts = [Path(p).read_text().strip() for p in private]
    for value in settings.values():
        assert "PRIVATE KEY" not in value
        assert all(t not in value for t in texts)


async def test_project_pages_while_projects_come_and_go(runnerless_admin: ApiClient) -> None:
    """Keyset pages: every project that stays is read once, in id order, whatever is added or
    deleted between pages."""
    admin = runnerless_admin
    a = await _owner(admin)
    projects = [a.project_id] + [(await a.client.new_project(f"x-{_tag()}")).id for _ in range(5)]
    first = await admin.admin.ListAllProjects(
        apb.ListAllProjectsRequest(user_id=a.user_id, page_size=2), metadata=admin.md
    )
    seen = [p.id for p in first.projects]
    assert seen == projects[:2]
    for gone in (projects[1], projects[3]):  # one already read, one not yet
        await a.client.projects.DeleteProject(
            project_service_pb2.DeleteProjectRequest(project_id=gone), metadata=a.client.md
        )
    added = (await a.client.new_project(f"late-{_tag()}")).id
    token = first.next_page_token
    while token:
        page = await admin.admin.ListAllProjects(
            apb.ListAllProjectsRequest(user_id=a.user_id, page_size=2, page_token=token),
            metadata=admin.md,
        )
        seen += [p.id for p in page.projects]
        token = page.next_page_token
    assert seen == [projects[0], projects[1], projects[2], projects[4], projects[5], added]
