"""A collected package's tasks in a workflow, executed by the runner (in this process, beside
the session's api and the collector): the commands the collector built run the task scripts
in the package's own environment, and their outputs reach the image list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from collections_api import (
    activity_ends_ok,
    collected,
    images_of,
    one_image_workflow,
    run_job,
    tasks_with_source,
)
from collector_world import CollectorWorld

from fractal.v2 import job_pb2
from fractal.v2 import task_collection_pb2 as cpb
from fractal.v2 import task_collection_service_pb2 as pb
from helpers import ApiClient, error_details

JOB_TIMEOUT = 60.0


@pytest.fixture(scope="module")
async def runner(service_env: dict[str, str], api_internal_address: str) -> AsyncIterator[None]:
    from fractal_grpc.settings import RunnerSettings
    from fractal_runner.app import RunnerApp

    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    app = RunnerApp(
        RunnerSettings(
            **env, runner_address="127.0.0.1:0", api_url=api_internal_address, grace_seconds=0.5
        )
    )
    await app.start()
    try:
        yield
    finally:
        await app.stop()


@pytest.mark.parametrize("collector", ["uv"], indirect=True)
async def test_a_collected_package_runs_in_a_workflow(
    collector: CollectorWorld, verified: ApiClient, runner: None, tmp_path: Path
) -> None:
    final, _ = await collected(verified, str(collector.wheels["run"]))
    assert final.state == cpb.COLLECTION_STATE_OK, final.log
    tasks = {t.name: t.id for t in await tasks_with_source(verified, final.source + ":")}

    names = ("Create Things", "Treat Image", "Compound Step")
    submit = await one_image_workflow(
        verified, str(tmp_path / "zarr"), [tasks[name] for name in names]
    )
    ended = await run_job(verified, submit, JOB_TIMEOUT)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    (image,) = await images_of(verified, submit)
    # Set by the parallel task's script, by its manifest's output types, and by the compound
    # task's parallel part (which needed "treated" as an input type).
    assert {"treat": True, "treated": True, "step": True}.items() <= dict(image.types).items()


@pytest.mark.parametrize("collector", ["uv"], indirect=True)
async def test_deactivate_refuses_submits_until_reactivated(
    collector: CollectorWorld, verified: ApiClient, admin: ApiClient, runner: None, tmp_path: Path
) -> None:
    final, _ = await collected(verified, str(collector.wheels["life"]))
    assert final.state == cpb.COLLECTION_STATE_OK, final.log
    (create,) = [
        t
        for t in await tasks_with_source(verified, final.source + ":")
        if t.name == "Create Things"
    ]
    submit = await one_image_workflow(verified, str(tmp_path / "zarr"), [create.id])

    async def run() -> job_pb2.Job:
        return await run_job(verified, submit, JOB_TIMEOUT)

    assert (await run()).status == job_pb2.JOB_STATUS_DONE

    # Only a superuser deactivates; the tasks are unrunnable at once, the folder goes.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await verified.collections.DeactivateCollection(
            pb.DeactivateCollectionRequest(collection_id=final.id), metadata=verified.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    deactivation = await admin.collections.DeactivateCollection(
        pb.DeactivateCollectionRequest(collection_id=final.id), metadata=admin.md
    )
    activity = deactivation.activity
    assert activity.kind == cpb.COLLECTION_KIND_DEACTIVATE
    assert activity.target_collection_id == final.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await verified.jobs.SubmitJob(submit, metadata=verified.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert final.package_name in (err.value.details() or "")
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "TASK_PACKAGE_INACTIVE"
    await activity_ends_ok(admin, activity)
    target = (
        await verified.collections.GetCollection(
            pb.GetCollectionRequest(collection_id=final.id), metadata=verified.md
        )
    ).collection
    assert not target.active and target.freeze == final.freeze
    assert not Path(final.env_dir).exists()
    assert len(await tasks_with_source(verified, final.source + ":")) == 3  # kept
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.collections.DeactivateCollection(
            pb.DeactivateCollectionRequest(collection_id=final.id), metadata=admin.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Reactivated from the frozen versions, in the same folder: the workflow runs again.
    reactivation = await admin.collections.ReactivateCollection(
        pb.ReactivateCollectionRequest(collection_id=final.id), metadata=admin.md
    )
    assert reactivation.activity.kind == cpb.COLLECTION_KIND_REACTIVATE
    await activity_ends_ok(admin, reactivation.activity)
    target = (
        await verified.collections.GetCollection(
            pb.GetCollectionRequest(collection_id=final.id), metadata=verified.md
        )
    ).collection
    assert target.active
    assert (Path(final.env_dir) / "venv" / "bin" / "python").exists()
    assert (await run()).status == job_pb2.JOB_STATUS_DONE
