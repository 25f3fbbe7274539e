"""DeleteCollection: only a failed or deactivated collection, never while a workflow uses one
of its tasks; the test plays the collector through the internal RPCs."""

from __future__ import annotations

import secrets
from typing import Any

import grpc
import grpc.aio
import pytest

from fractal.internal.v1 import task_registration_service_pb2 as rpb
from fractal.internal.v1 import task_registration_service_pb2_grpc as rrpc
from fractal.v2 import task_collection_service_pb2 as pb
from fractal.v2 import task_service_pb2, workflow_service_pb2
from helpers import ApiClient, error_details

Metadata = tuple[tuple[str, str], ...]


async def _play_collector(
    admin: ApiClient, service_md: Metadata, collection_id: int, **result: Any
) -> None:
    assert admin.internal_channel is not None
    stub = rrpc.TaskRegistrationServiceStub(admin.internal_channel)
    owner = f"test-{secrets.token_hex(3)}"
    claim = await stub.ClaimCollection(
        rpb.ClaimCollectionRequest(collection_id=collection_id, owner=owner, lease_seconds=60),
        metadata=service_md,
    )
    assert claim.claimed
    await stub.FinishCollection(
        rpb.FinishCollectionRequest(collection_id=collection_id, owner=owner, **result),
        metadata=service_md,
    )


async def _refused(call: Any, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(err.value)
    assert info is not None and info.reason == reason, info


async def test_delete_only_unused_and_inactive(
    user: ApiClient, admin: ApiClient, service_md: Metadata
) -> None:
    made = (
        await user.collections.CollectPip(
            pb.CollectPipRequest(package=f"pkg-{secrets.token_hex(4)}", package_version="1.0"),
            metadata=user.md,
        )
    ).collection
    source = f"pip_remote:{made.package_name.replace('-', '_')}:1.0::py{made.python_version}"
    task = rpb.CollectedTask(name="t", source=f"{source}:t", command_non_parallel="/bin/true")
    await _play_collector(
        admin,
        service_md,
        made.id,
        success=rpb.CollectionSuccess(
            package_version="1.0", env_dir="/envs/x", freeze="x==1.0\n", tasks=[task]
        ),
    )
    got = await user.collections.GetCollection(
        pb.GetCollectionRequest(collection_id=made.id), metadata=user.md
    )
    (task_id,) = got.collection.task_ids
    delete = pb.DeleteCollectionRequest(collection_id=made.id)
    await _refused(
        admin.collections.DeleteCollection(delete, metadata=admin.md), "COLLECTION_ACTIVE"
    )

    project = await user.new_project()
    wf = await user.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="uses"),
        metadata=user.md,
    )
    await user.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wf.workflow.id, task_id=task_id
        ),
        metadata=user.md,
    )
    activity = (
        await admin.collections.DeactivateCollection(
            pb.DeactivateCollectionRequest(collection_id=made.id), metadata=admin.md
        )
    ).activity
    # An activity in progress blocks the delete too.
    await _refused(
        admin.collections.DeleteCollection(delete, metadata=admin.md), "ACTIVITY_IN_PROGRESS"
    )
    await _play_collector(admin, service_md, activity.id, activity_done=True)
    await _refused(admin.collections.DeleteCollection(delete, metadata=admin.md), "TASK_IN_USE")
    await user.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), metadata=user.md)

    await user.workflows.DeleteWorkflow(
        workflow_service_pb2.DeleteWorkflowRequest(
            project_id=project.id, workflow_id=wf.workflow.id
        ),
        metadata=user.md,
    )
    await admin.collections.DeleteCollection(delete, metadata=admin.md)
    for call in (
        user.collections.GetCollection(
            pb.GetCollectionRequest(collection_id=made.id), metadata=user.md
        ),
        user.collections.GetCollection(
            pb.GetCollectionRequest(collection_id=activity.id), metadata=user.md
        ),
        user.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), metadata=user.md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
