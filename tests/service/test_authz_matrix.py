"""The authorization matrix, from one table: every RPC that server reflection lists on api's
listeners × every kind of caller → the expected code.

An RPC missing from ``TABLE`` (a new one) fails the test, so every RPC added later gets its row.
Each row says what the RPC requires (``Access``), whether its request names the owner's objects
(``scoped``: anyone else gets NOT_FOUND, exactly as for an id that does not exist), and how to
build a request that succeeds for an allowed caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf import descriptor_pool, field_mask_pb2, message_factory, struct_pb2
from google.protobuf.message import Message
from test_images_jobs_api import make_dataset, make_task
from test_listeners_and_streams import listed_services

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.internal.v1 import task_registration_service_pb2 as rpb
from fractal.internal.v1 import task_registration_service_pb2_grpc
from fractal.v2 import (
    admin_service_pb2,
    auth_service_pb2,
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    project_pb2,
    project_service_pb2,
    task_collection_service_pb2,
    task_service_pb2,
    user_pb2,
    user_service_pb2,
    workflow_service_pb2,
)
from fractal_api.access import ACCESS
from fractal_grpc.auth.principal import Access
from fractal_grpc.jobfolder import find_job_folder, job_folder_name
from helpers import ApiClient
from world import RunnerListener, RunningApi

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass
class World:
    """The owner's objects, which the requests of scoped RPCs name."""

    owner: ApiClient
    owner_id: int
    spare_user_id: int
    project_id: int
    dataset_id: int
    workflow_id: int
    task_id: int
    job_id: int  # watched, read and stopped by the user RPCs
    spec_job_id: int  # read and given a result by the internal RPCs
    finish_job_id: int  # finished by FinishJob
    # Where the runner's listener of the test keeps job folders (DownloadJobFolder reads there).
    job_folders: Path | None = None
    # A service token's metadata (the collector's claim before its other internal calls).
    service_md: tuple[tuple[str, str], ...] = ()
    # The superuser (lifecycle activities need one to start).
    admin: ApiClient | None = None

    def registration(self) -> task_registration_service_pb2_grpc.TaskRegistrationServiceStub:
        assert self.owner.internal_channel is not None
        return task_registration_service_pb2_grpc.TaskRegistrationServiceStub(
            self.owner.internal_channel
        )

    async def collected(self, *, active: bool = True) -> int:
        """A collection ended OK by playing the collector (deactivated too if not ``active``)."""
        package = _unique("pkg")
        made = await self.owner.collections.CollectPip(
            task_collection_service_pb2.CollectPipRequest(package=package, package_version="1.0"),
            metadata=self.owner.md,
        )
        collection = made.collection
        await self._play_collector(
            collection.id,
            success=rpb.CollectionSuccess(
                package_version="1.0",
                env_dir=f"/envs/{package}",
                freeze=f"{package}==1.0\n",
                tasks=[
                    rpb.CollectedTask(
                        name="t",
                        source=f"pip_remote:{collection.package_name.replace('-', '_')}:1.0::"
                        f"py{collection.python_version}:t",
                        command_non_parallel="/bin/true",
                    )
                ],
            ),
        )
        if not active:
            assert self.admin is not None
            started = await self.admin.collections.DeactivateCollection(
                task_collection_service_pb2.DeactivateCollectionRequest(
                    collection_id=collection.id
                ),
                metadata=self.admin.md,
            )
            await self._play_collector(started.activity.id, activity_done=True)
        return collection.id

    async def _play_collector(self, collection_id: int, **result: Any) -> None:
        stub = self.registration()
        await stub.ClaimCollection(
            rpb.ClaimCollectionRequest(
                collection_id=collection_id, owner="authz", lease_seconds=60
            ),
            metadata=self.service_md,
        )
        await stub.FinishCollection(
            rpb.FinishCollectionRequest(collection_id=collection_id, owner="authz", **result),
            metadata=self.service_md,
        )

    async def collection(self, *, claimed: bool = False) -> int:
        """A new PENDING collection of the owner (claimed by "authz" if asked); nothing
        consumes the runnerless api's commands, so it stays so."""
        made = await self.owner.collections.CollectPip(
            task_collection_service_pb2.CollectPipRequest(package=_unique("pkg")),
            metadata=self.owner.md,
        )
        if claimed:
            assert self.owner.internal_channel is not None
            await task_registration_service_pb2_grpc.TaskRegistrationServiceStub(
                self.owner.internal_channel
            ).ClaimCollection(
                rpb.ClaimCollectionRequest(
                    collection_id=made.collection.id, owner="authz", lease_seconds=60
                ),
                metadata=self.service_md,
            )
        return made.collection.id

    async def job_folder(self) -> int:
        """``job_id``, after giving it a folder on the runner's storage."""
        assert self.job_folders is not None
        if find_job_folder(self.job_folders, self.job_id) is None:
            name = job_folder_name(
                self.project_id, self.workflow_id, self.job_id, datetime.now(UTC)
            )
            (self.job_folders / name / "0_task").mkdir(parents=True)
            (self.job_folders / name / "workflow.log").write_text("log\n")
        return self.job_id

    async def free_dataset(self) -> int:
        ds = await self.owner.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=self.project_id, name=_unique("d"), zarr_dir=f"/zarr/{_unique('z')}"
            ),
            metadata=self.owner.md,
        )
        return ds.dataset.id

    async def submit(self) -> int:
        job = await self.owner.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=self.project_id,
                workflow_id=self.workflow_id,
                dataset_id=await self.free_dataset(),
            ),
            metadata=self.owner.md,
        )
        return job.job.id

    async def free_workflow(self, with_task: bool = False) -> tuple[int, int]:
        """A new workflow of the owner (with one workflow task if asked): (workflow, wftask)."""
        wf = await self.owner.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(
                project_id=self.project_id, name=_unique("wf")
            ),
            metadata=self.owner.md,
        )
        wftask_id = 0
        if with_task:
            created = await self.owner.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=self.project_id, workflow_id=wf.workflow.id, task_id=self.task_id
                ),
                metadata=self.owner.md,
            )
            wftask_id = created.workflow_task.id
        return wf.workflow.id, wftask_id

    async def first_wftask(self) -> int:
        got = await self.owner.workflows.GetWorkflow(
            workflow_service_pb2.GetWorkflowRequest(
                project_id=self.project_id, workflow_id=self.workflow_id
            ),
            metadata=self.owner.md,
        )
        return got.workflow.task_list[0].id


Build = Callable[[World], Awaitable[Message]]


@dataclass(frozen=True)
class Row:
    access: Access
    build: Build
    scoped: bool = False
    owned: bool = False  # only the object's owner or a superuser (tasks), others refused


def row(access: Access, scoped: bool = False, owned: bool = False) -> Callable[[Build], Row]:
    def wrap(build: Build) -> Row:
        return Row(access, build, scoped, owned)

    return wrap


async def _login(w: World) -> Message:
    return auth_service_pb2.LoginRequest(email=w.owner.email, password="secret-pw")


async def _spare_update(w: World) -> Message:
    return user_service_pb2.UpdateUserRequest(
        user_id=w.spare_user_id,
        user=user_pb2.User(username=_unique("u")),
        update_mask=field_mask_pb2.FieldMask(paths=["username"]),
    )


async def _fresh_project(w: World) -> int:
    project = await w.owner.new_project(_unique("p"))
    return int(project.id)


async def _rename_project(w: World) -> Message:
    return project_service_pb2.UpdateProjectRequest(
        project_id=await _fresh_project(w),
        project=project_pb2.Project(name=_unique("p")),
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )


async def _delete_project(w: World) -> Message:
    return project_service_pb2.DeleteProjectRequest(project_id=await _fresh_project(w))


async def _update_dataset(w: World) -> Message:
    return dataset_service_pb2.UpdateDatasetRequest(
        project_id=w.project_id,
        dataset_id=await w.free_dataset(),
        dataset=project_pb2.Dataset(name=_unique("d")),
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )


async def _delete_dataset(w: World) -> Message:
    return dataset_service_pb2.DeleteDatasetRequest(
        project_id=w.project_id, dataset_id=await w.free_dataset()
    )


async def _added_image(w: World) -> str:
    url = f"/zarr/{_unique('img')}"
    await w.owner.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=w.project_id, dataset_id=w.dataset_id, images=[image_pb2.Image(zarr_url=url)]
        ),
        metadata=w.owner.md,
    )
    return url


async def _update_image(w: World) -> Message:
    return image_service_pb2.UpdateImageRequest(
        project_id=w.project_id,
        dataset_id=w.dataset_id,
        image=image_pb2.Image(zarr_url=await _added_image(w), types={"seen": True}),
        update_mask=field_mask_pb2.FieldMask(paths=["types"]),
    )


async def _delete_images(w: World) -> Message:
    return image_service_pb2.DeleteImagesRequest(
        project_id=w.project_id, dataset_id=w.dataset_id, zarr_urls=[await _added_image(w)]
    )


async def _submit(w: World) -> Message:
    return job_service_pb2.SubmitJobRequest(
        project_id=w.project_id, workflow_id=w.workflow_id, dataset_id=await w.free_dataset()
    )


async def _delete_workflow(w: World) -> Message:
    workflow_id, _ = await w.free_workflow()
    return workflow_service_pb2.DeleteWorkflowRequest(
        project_id=w.project_id, workflow_id=workflow_id
    )


async def _get_wftask(w: World) -> Message:
    return workflow_service_pb2.GetWorkflowTaskRequest(
        project_id=w.project_id, workflow_id=w.workflow_id, workflow_task_id=await w.first_wftask()
    )


async def _update_wftask(w: World) -> Message:
    request = workflow_service_pb2.UpdateWorkflowTaskRequest(
        project_id=w.project_id, workflow_id=w.workflow_id, workflow_task_id=await w.first_wftask()
    )
    request.meta_non_parallel.update({"cpus_per_task": 1})
    return request


async def _delete_wftask(w: World) -> Message:
    workflow_id, wftask_id = await w.free_workflow(with_task=True)
    return workflow_service_pb2.DeleteWorkflowTaskRequest(
        project_id=w.project_id, workflow_id=workflow_id, workflow_task_id=wftask_id
    )


async def _import_workflow(w: World) -> Message:
    exported = await w.owner.workflows.ExportWorkflow(
        workflow_service_pb2.ExportWorkflowRequest(
            project_id=w.project_id, workflow_id=w.workflow_id
        ),
        metadata=w.owner.md,
    )
    exported.workflow.name = _unique("wf")
    return workflow_service_pb2.ImportWorkflowRequest(
        project_id=w.project_id, workflow=exported.workflow
    )


async def _delete_task(w: World) -> Message:
    task_id = await make_task(w.owner, _unique("t"), command_non_parallel="/bin/true")
    return task_service_pb2.DeleteTaskRequest(task_id=task_id)


async def _download(w: World) -> Message:
    return job_service_pb2.DownloadJobFolderRequest(
        project_id=w.project_id, job_id=await w.job_folder()
    )


async def _mark_failed(w: World) -> Message:
    return admin_service_pb2.MarkJobFailedRequest(job_id=await w.submit())


async def _admin_download(w: World) -> Message:
    return admin_service_pb2.DownloadAnyJobFolderRequest(job_id=await w.job_folder())


async def _get_collection(w: World) -> Message:
    return task_collection_service_pb2.GetCollectionRequest(
        collection_id=await w.collection(), with_log=True
    )


async def _watch_collection(w: World) -> Message:
    return task_collection_service_pb2.WatchCollectionRequest(collection_id=await w.collection())


async def _claim_collection(w: World) -> Message:
    return rpb.ClaimCollectionRequest(
        collection_id=await w.collection(), owner="authz", lease_seconds=60
    )


async def _report_collection(w: World) -> Message:
    return rpb.ReportCollectionProgressRequest(
        collection_id=await w.collection(claimed=True), owner="authz", lease_seconds=60, log="x\n"
    )


async def _finish_collection(w: World) -> Message:
    return rpb.FinishCollectionRequest(
        collection_id=await w.collection(claimed=True), owner="authz", error="given up"
    )


async def _deactivate(w: World) -> Message:
    return task_collection_service_pb2.DeactivateCollectionRequest(
        collection_id=await w.collected()
    )


async def _reactivate(w: World) -> Message:
    return task_collection_service_pb2.ReactivateCollectionRequest(
        collection_id=await w.collected(active=False)
    )


def _upload_request() -> Message:
    content = secrets.token_bytes(64)
    return task_collection_service_pb2.UploadAndCollectRequest(
        header=task_collection_service_pb2.WheelUpload(
            filename=f"pkg_{secrets.token_hex(4)}-1.0-py3-none-any.whl",
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
        ),
        chunk=content,
    )


async def _read_wheel(w: World) -> Message:
    request = _upload_request()

    async def one() -> Any:
        yield request

    made = await w.owner.collections.UploadAndCollect(one(), metadata=w.owner.md)
    return rpb.ReadCollectionWheelRequest(collection_id=made.collection.id)


def _custom_request() -> Message:
    manifest = struct_pb2.Struct()
    manifest.update(
        {"manifest_version": "2", "task_list": [{"name": "t", "executable_non_parallel": "t.py"}]}
    )
    return task_collection_service_pb2.CollectCustomRequest(
        manifest=manifest, python_interpreter="/bin/python", package_root="/p", source=_unique("c")
    )


async def _delete_collection(w: World) -> Message:
    return task_collection_service_pb2.DeleteCollectionRequest(
        collection_id=await w.collected(active=False)
    )


def _const(make: Callable[[World], Message]) -> Build:
    async def build(w: World) -> Message:
        return make(w)

    return build


U, V, S, INT, P = Access.USER, Access.VERIFIED, Access.SUPERUSER, Access.INTERNAL, Access.PUBLIC
v2, internal = "/fractal.v2.", "/fractal.internal.v1.JobExecutionService/"
registration = "/fractal.internal.v1.TaskRegistrationService/"
TABLE: dict[str, Row] = {
    f"{v2}AuthService/Login": row(P)(_login),
    f"{v2}AuthService/GetCurrentUser": row(U)(
        _const(lambda w: auth_service_pb2.GetCurrentUserRequest())
    ),
    f"{v2}AuthService/UpdateCurrentUser": row(U)(
        _const(
            lambda w: auth_service_pb2.UpdateCurrentUserRequest(
                user=user_pb2.User(slurm_accounts=[]),
                update_mask=field_mask_pb2.FieldMask(paths=["slurm_accounts"]),
            )
        )
    ),
    f"{v2}UserService/CreateUser": row(S)(
        _const(
            lambda w: user_service_pb2.CreateUserRequest(
                email=f"{_unique('m')}@example.org", password="secret-pw"
            )
        )
    ),
    f"{v2}UserService/GetUser": row(S)(
        _const(lambda w: user_service_pb2.GetUserRequest(user_id=w.spare_user_id))
    ),
    f"{v2}UserService/ListUsers": row(S)(_const(lambda w: user_service_pb2.ListUsersRequest())),
    f"{v2}UserService/UpdateUser": row(S)(_spare_update),
    f"{v2}ProjectService/CreateProject": row(U)(
        _const(lambda w: project_service_pb2.CreateProjectRequest(name=_unique("p")))
    ),
    f"{v2}ProjectService/GetProject": row(U, scoped=True)(
        _const(lambda w: project_service_pb2.GetProjectRequest(project_id=w.project_id))
    ),
    f"{v2}ProjectService/ListProjects": row(U)(
        _const(lambda w: project_service_pb2.ListProjectsRequest())
    ),
    f"{v2}ProjectService/UpdateProject": row(U, scoped=True)(_rename_project),
    f"{v2}ProjectService/DeleteProject": row(U, scoped=True)(_delete_project),
    f"{v2}DatasetService/CreateDataset": row(U, scoped=True)(
        _const(
            lambda w: dataset_service_pb2.CreateDatasetRequest(
                project_id=w.project_id, name=_unique("d"), zarr_dir="/zarr/m"
            )
        )
    ),
    f"{v2}DatasetService/GetDataset": row(U, scoped=True)(
        _const(
            lambda w: dataset_service_pb2.GetDatasetRequest(
                project_id=w.project_id, dataset_id=w.dataset_id
            )
        )
    ),
    f"{v2}DatasetService/ListDatasets": row(U, scoped=True)(
        _const(lambda w: dataset_service_pb2.ListDatasetsRequest(project_id=w.project_id))
    ),
    f"{v2}DatasetService/UpdateDataset": row(U, scoped=True)(_update_dataset),
    f"{v2}DatasetService/DeleteDataset": row(U, scoped=True)(_delete_dataset),
    f"{v2}DatasetService/ExportDataset": row(U, scoped=True)(
        _const(
            lambda w: dataset_service_pb2.ExportDatasetRequest(
                project_id=w.project_id, dataset_id=w.dataset_id
            )
        )
    ),
    f"{v2}DatasetService/ImportDataset": row(U, scoped=True)(
        _const(
            lambda w: dataset_service_pb2.ImportDatasetRequest(
                project_id=w.project_id,
                name=_unique("d"),
                zarr_dir="/zarr/i",
                images=[image_pb2.Image(zarr_url="/zarr/i/a")],
            )
        )
    ),
    f"{v2}ImageService/UpdateImage": row(U, scoped=True)(_update_image),
    f"{v2}ImageService/DeleteImages": row(U, scoped=True)(_delete_images),
    f"{v2}ImageService/AddImages": row(U, scoped=True)(
        _const(
            lambda w: image_service_pb2.AddImagesRequest(
                project_id=w.project_id,
                dataset_id=w.dataset_id,
                images=[image_pb2.Image(zarr_url=f"/zarr/{_unique('img')}")],
            )
        )
    ),
    f"{v2}ImageService/QueryImages": row(U, scoped=True)(
        _const(
            lambda w: image_service_pb2.QueryImagesRequest(
                project_id=w.project_id, dataset_id=w.dataset_id
            )
        )
    ),
    f"{v2}TaskService/CreateTask": row(V)(
        _const(
            lambda w: task_service_pb2.CreateTaskRequest(
                name="t", source=_unique("src"), command_non_parallel="/bin/true"
            )
        )
    ),
    f"{v2}TaskService/GetTask": row(U)(
        _const(lambda w: task_service_pb2.GetTaskRequest(task_id=w.task_id))
    ),
    f"{v2}TaskService/ListTasks": row(U)(_const(lambda w: task_service_pb2.ListTasksRequest())),
    f"{v2}WorkflowService/CreateWorkflow": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.CreateWorkflowRequest(
                project_id=w.project_id, name=_unique("wf")
            )
        )
    ),
    f"{v2}WorkflowService/GetWorkflow": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.GetWorkflowRequest(
                project_id=w.project_id, workflow_id=w.workflow_id
            )
        )
    ),
    f"{v2}WorkflowService/ListWorkflows": row(U, scoped=True)(
        _const(lambda w: workflow_service_pb2.ListWorkflowsRequest(project_id=w.project_id))
    ),
    f"{v2}WorkflowService/CreateWorkflowTask": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=w.project_id, workflow_id=w.workflow_id, task_id=w.task_id
            )
        )
    ),
    f"{v2}WorkflowService/UpdateWorkflow": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.UpdateWorkflowRequest(
                project_id=w.project_id, workflow_id=w.workflow_id, name=_unique("wf")
            )
        )
    ),
    f"{v2}WorkflowService/DeleteWorkflow": row(U, scoped=True)(_delete_workflow),
    f"{v2}WorkflowService/GetWorkflowTask": row(U, scoped=True)(_get_wftask),
    f"{v2}WorkflowService/UpdateWorkflowTask": row(U, scoped=True)(_update_wftask),
    f"{v2}WorkflowService/DeleteWorkflowTask": row(U, scoped=True)(_delete_wftask),
    f"{v2}WorkflowService/ExportWorkflow": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.ExportWorkflowRequest(
                project_id=w.project_id, workflow_id=w.workflow_id
            )
        )
    ),
    f"{v2}WorkflowService/ImportWorkflow": row(U, scoped=True)(_import_workflow),
    f"{v2}WorkflowService/GetWorkflowStatus": row(U, scoped=True)(
        _const(
            lambda w: workflow_service_pb2.GetWorkflowStatusRequest(
                project_id=w.project_id, workflow_id=w.workflow_id, dataset_id=w.dataset_id
            )
        )
    ),
    f"{v2}TaskService/UpdateTask": row(V, owned=True)(
        _const(lambda w: task_service_pb2.UpdateTaskRequest(task_id=w.task_id, version="2"))
    ),
    f"{v2}TaskService/DeleteTask": row(U, owned=True)(_delete_task),
    f"{v2}JobService/SubmitJob": row(V, scoped=True)(_submit),
    f"{v2}JobService/GetJob": row(U, scoped=True)(
        _const(lambda w: job_service_pb2.GetJobRequest(project_id=w.project_id, job_id=w.job_id))
    ),
    f"{v2}JobService/ListJobs": row(U, scoped=True)(
        _const(lambda w: job_service_pb2.ListJobsRequest(project_id=w.project_id))
    ),
    f"{v2}JobService/StopJob": row(U, scoped=True)(
        _const(lambda w: job_service_pb2.StopJobRequest(project_id=w.project_id, job_id=w.job_id))
    ),
    f"{v2}JobService/WatchJob": row(U, scoped=True)(
        _const(lambda w: job_service_pb2.WatchJobRequest(project_id=w.project_id, job_id=w.job_id))
    ),
    f"{v2}JobService/DownloadJobFolder": row(U, scoped=True)(_download),
    f"{v2}AdminService/ListAllProjects": row(S)(
        _const(lambda w: admin_service_pb2.ListAllProjectsRequest())
    ),
    f"{v2}AdminService/ListAllJobs": row(S)(
        _const(lambda w: admin_service_pb2.ListAllJobsRequest(project_id=w.project_id))
    ),
    f"{v2}AdminService/GetAnyJob": row(S)(
        _const(lambda w: admin_service_pb2.GetAnyJobRequest(job_id=w.job_id))
    ),
    f"{v2}AdminService/MarkJobFailed": row(S)(_mark_failed),
    f"{v2}AdminService/StopAnyJob": row(S)(
        _const(lambda w: admin_service_pb2.StopAnyJobRequest(job_id=w.job_id))
    ),
    f"{v2}AdminService/DownloadAnyJobFolder": row(S)(_admin_download),
    f"{v2}AdminService/QueryTasks": row(S)(
        _const(lambda w: admin_service_pb2.QueryTasksRequest(task_id=w.task_id))
    ),
    f"{v2}AdminService/GetSettings": row(S)(
        _const(lambda w: admin_service_pb2.GetSettingsRequest())
    ),
    f"{v2}TaskCollectionService/CollectPip": row(V)(
        _const(lambda w: task_collection_service_pb2.CollectPipRequest(package=_unique("pkg")))
    ),
    f"{v2}TaskCollectionService/UploadAndCollect": row(V)(_const(lambda w: _upload_request())),
    f"{v2}TaskCollectionService/CollectCustom": row(V)(_const(lambda w: _custom_request())),
    f"{v2}TaskCollectionService/GetCollection": row(U)(_get_collection),
    f"{v2}TaskCollectionService/WatchCollection": row(U)(_watch_collection),
    f"{v2}TaskCollectionService/ListCollections": row(U)(
        _const(lambda w: task_collection_service_pb2.ListCollectionsRequest())
    ),
    f"{v2}TaskCollectionService/DeactivateCollection": row(S)(_deactivate),
    f"{v2}TaskCollectionService/ReactivateCollection": row(S)(_reactivate),
    f"{v2}TaskCollectionService/DeleteCollection": row(S)(_delete_collection),
    f"{registration}ClaimCollection": row(INT)(_claim_collection),
    f"{registration}ReadCollectionWheel": row(INT)(_read_wheel),
    f"{registration}ReportCollectionProgress": row(INT)(_report_collection),
    f"{registration}FinishCollection": row(INT)(_finish_collection),
    f"{internal}GetJobSpec": row(INT)(
        _const(lambda w: ipb.GetJobSpecRequest(job_id=w.spec_job_id))
    ),
    f"{internal}StreamTaskInputs": row(INT)(
        _const(lambda w: ipb.StreamTaskInputsRequest(job_id=w.spec_job_id, task_order=0))
    ),
    f"{internal}ApplyTaskResult": row(INT)(
        _const(
            lambda w: ipb.ApplyTaskResultRequest(
                job_id=w.spec_job_id, task_order=0, output=ipb.TaskOutput()
            )
        )
    ),
    f"{internal}ReportTaskProgress": row(INT)(
        _const(
            lambda w: ipb.ReportTaskProgressRequest(
                job_id=w.spec_job_id, task_order=0, calls=ipb.CallCounts(done=1, total=2)
            )
        )
    ),
    f"{internal}FinishJob": row(INT)(
        _const(
            lambda w: ipb.FinishJobRequest(
                job_id=w.finish_job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"
            )
        )
    ),
}

# The callers. Forged ones carry the claims a real token of the method's audience would.
FORGED = ("no token", "garbage", "alg=none", "HS256 with the public key", "other key", "expired")
CALLERS = (*FORGED, "deactivated", "unverified", "non-member", "owner", "superuser", "service")


def expected(entry: Row, caller: str) -> grpc.StatusCode:
    """The matrix's rule, one line per situation (README "Errors")."""
    access, scoped = entry.access, entry.scoped
    if access is P:
        return OK
    if caller in FORGED:
        return UNAUTHENTICATED
    if access is INT:
        return OK if caller == "service" else PERMISSION_DENIED  # a user is no service
    if caller == "service":
        return PERMISSION_DENIED  # a service is no user
    if caller == "deactivated":
        return UNAUTHENTICATED
    if access is S:
        return OK if caller == "superuser" else PERMISSION_DENIED
    if access is V and caller == "unverified":
        return PERMISSION_DENIED
    if entry.owned:
        return OK if caller in ("owner", "superuser") else PERMISSION_DENIED
    if caller == "owner" or not scoped:
        return OK
    return NOT_FOUND  # exists but not theirs: as if it did not exist (superusers included)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed with ``secret`` (pyjwt refuses a PEM key as an HMAC secret)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


@dataclass
class Callers:
    key_env: dict[str, str]
    tokens: dict[str, str]  # the real user tokens by caller
    service_md: tuple[tuple[str, str], ...]
    owner_id: int

    def metadata(self, caller: str, access: Access) -> tuple[tuple[str, str], ...]:
        if caller == "no token":
            return ()
        if caller == "service":
            return self.service_md
        token = self.tokens[caller] if caller in self.tokens else self.forged(caller, access)
        return (("authorization", f"Bearer {token}"),)

    def forged(self, caller: str, access: Access) -> str:
        pair = "SERVICE" if access is INT else "JWT"
        now = int(time.time())
        claims = {
            "sub": "service:runner" if access is INT else str(self.owner_id),
            "aud": "fractal-internal" if access is INT else "fractal-api",
            "iat": now,
            "exp": now + 300,
        }
        real = Path(self.key_env[f"FRACTAL_{pair}_PRIVATE_KEY_FILE"]).read_text()
        public = Path(self.key_env[f"FRACTAL_{pair}_PUBLIC_KEY_FILE"]).read_bytes()
        if caller == "garbage":
            return "garbage"
        if caller == "alg=none":
            return jwt.encode(claims, None, algorithm="none")
        if caller == "HS256 with the public key":
            return _hs256(claims, public)
        if caller == "other key":
            other = Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            )
            return jwt.encode(claims, other, algorithm="EdDSA")
        assert caller == "expired"
        return jwt.encode({**claims, "exp": now - 10}, real, algorithm="EdDSA")


async def _user_id(client: ApiClient) -> int:
    me = await client.auth.GetCurrentUser(
        auth_service_pb2.GetCurrentUserRequest(), metadata=client.md
    )
    return me.user.id


async def build_world(admin: ApiClient) -> tuple[World, dict[str, str]]:
    owner = await admin.new_user()
    deactivated = await admin.new_user()
    unverified = await admin.new_user(verified=False)
    stranger = await admin.new_user()
    spare = await admin.new_user()
    await admin.users.UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user_id=await _user_id(deactivated),
            user=user_pb2.User(is_active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["is_active"]),
        ),
        metadata=admin.md,
    )
    project_id, dataset_id = await make_dataset(owner)
    task_id = await make_task(owner, _unique("t"), command_non_parallel="/bin/true")
    wf = await owner.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project_id, name="wf"),
        metadata=owner.md,
    )
    await owner.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project_id, workflow_id=wf.workflow.id, task_id=task_id
        ),
        metadata=owner.md,
    )
    world = World(
        owner=owner,
        owner_id=await _user_id(owner),
        spare_user_id=await _user_id(spare),
        project_id=project_id,
        dataset_id=dataset_id,
        workflow_id=wf.workflow.id,
        task_id=task_id,
        job_id=0,
        spec_job_id=0,
        finish_job_id=0,
    )
    world.job_id = await world.submit()
    world.spec_job_id = await world.submit()
    world.finish_job_id = await world.submit()
    tokens = {
        "deactivated": deactivated.token,
        "unverified": unverified.token,
        "non-member": stranger.token,
        "owner": owner.token,
        "superuser": admin.token,
    }
    return world, tokens


async def call(
    channel: grpc.aio.Channel, method: str, request: Message, metadata: Any
) -> grpc.StatusCode:
    """Call ``method`` (any kind) and return its code; a stream is OK once its first message
    (or its end) arrives."""
    desc = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    response = message_factory.GetMessageClass(desc.output_type)
    kw: dict[str, Any] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response.FromString,
    }
    try:
        if desc.client_streaming:
            streaming: Any = (
                channel.stream_stream(method, **kw)
                if desc.server_streaming
                else channel.stream_unary(method, **kw)
            )
            stream = streaming(metadata=metadata)
            if desc.server_streaming:
                await stream.write(request)
                await stream.read()
                stream.cancel()
            else:
                await stream.write(request)
                await stream.done_writing()
                await stream
        elif desc.server_streaming:
            stream = channel.unary_stream(method, **kw)(request, metadata=metadata, timeout=30)
            await stream.read()
            stream.cancel()
        else:
            await channel.unary_unary(method, **kw)(request, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return OK


async def reflected_methods(address: str) -> list[str]:
    pool = descriptor_pool.Default()
    methods = []
    for service in sorted(await listed_services(address)):
        if service.startswith("grpc."):
            continue
        for method in pool.FindServiceByName(service).methods:
            methods.append(f"/{service}/{method.name}")
    return methods


async def test_authorization_matrix(
    runnerless_api: RunningApi,
    runnerless_admin: ApiClient,
    key_env: dict[str, str],
    service_md: tuple[tuple[str, str], ...],
    runner_listener: RunnerListener,
) -> None:
    admin = runnerless_admin
    assert admin.internal_channel is not None
    listeners = {
        "public": (admin.channel, await reflected_methods(runnerless_api.address)),
        "internal": (
            admin.internal_channel,
            await reflected_methods(runnerless_api.internal_address),
        ),
    }
    everything = [m for _, methods in listeners.values() for m in methods]
    missing = sorted(set(everything) - set(TABLE))
    assert not missing, f"RPCs without a row in the authorization matrix: {missing}"
    assert sorted(everything) == sorted(TABLE), "rows for RPCs that no listener serves"
    # The matrix agrees with the service's own access table.
    assert {m: r.access for m, r in TABLE.items()} == {m: ACCESS[m] for m in TABLE}

    world, tokens = await build_world(admin)
    world.job_folders = runner_listener.base_dir
    world.service_md = service_md
    world.admin = admin
    callers = Callers(key_env, tokens, service_md, world.owner_id)
    wrong = []
    count = 0
    for channel, methods in listeners.values():
        for method in methods:
            entry = TABLE[method]
            for caller in CALLERS:
                request = await entry.build(world)
                got = await call(channel, method, request, callers.metadata(caller, entry.access))
                count += 1
                want = expected(entry, caller)
                if got != want:
                    wrong.append(f"{method} as {caller}: {got.name}, expected {want.name}")
    assert not wrong, "\n".join(wrong)
    assert count == len(TABLE) * len(CALLERS)
