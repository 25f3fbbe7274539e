"""Projects, datasets and images: updates and deletes (reference §2.4, §3.2, §6.3)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pytest
from google.protobuf import field_mask_pb2
from test_images_jobs_api import assert_facets_exact, image, make_dataset, query, submitted_job

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal.v2 import (
    dataset_service_pb2 as dpb,
)
from fractal.v2 import (
    image_pb2,
    image_service_pb2,
    job_pb2,
    project_pb2,
)
from fractal.v2 import (
    project_service_pb2 as ppb,
)
from helpers import ApiClient, error_details


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def rename(client: ApiClient, pid: int, name: str) -> Any:
    return await client.projects.UpdateProject(
        ppb.UpdateProjectRequest(
            project_id=pid, project=project_pb2.Project(name=name), update_mask=mask("name")
        ),
        metadata=client.md,
    )


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def finish(client: ApiClient, service_md: Any, job_id: int) -> None:
    await client.internal.FinishJob(
        ipb.FinishJobRequest(job_id=job_id, status=job_pb2.JOB_STATUS_DONE, log="ok"),
        metadata=service_md,
    )


# --- projects ---------------------------------------------------------------------------------


async def test_rename_project_unique_per_user(user: ApiClient, admin: ApiClient) -> None:
    a = await user.new_project("alpha")
    b = await user.new_project("beta")
    renamed = await rename(user, a.id, "  gamma ")
    assert renamed.project.name == "gamma" and renamed.project.id == a.id
    # Its own current name: accepted, nothing changes (the reference refuses it).
    assert (await rename(user, a.id, "gamma")).project.name == "gamma"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rename(user, b.id, "gamma")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info, fields = error_details(err.value)
    assert info is not None and info.reason == "PROJECT_NAME_IN_USE"
    assert fields == ["name"]
    got = await user.projects.GetProject(ppb.GetProjectRequest(project_id=b.id), metadata=user.md)
    assert got.project.name == "beta"
    # The membership's copy of the name followed the rename: the old name is free again, the
    # new one taken.
    await user.new_project("alpha")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.new_project("gamma")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another user's names do not count.
    other = await admin.new_user()
    mine = await other.new_project("delta")
    assert (await rename(other, mine.id, "gamma")).project.name == "gamma"


async def test_update_project_refusals(user: ApiClient, admin: ApiClient) -> None:
    p = await user.new_project()
    for request, code in [
        (ppb.UpdateProjectRequest(project_id=p.id, project=project_pb2.Project(name="x")), "mask"),
        (
            ppb.UpdateProjectRequest(
                project_id=p.id, project=project_pb2.Project(name="  "), update_mask=mask("name")
            ),
            "name",
        ),
        (
            ppb.UpdateProjectRequest(
                project_id=p.id, project=project_pb2.Project(name="x"), update_mask=mask("id")
            ),
            "mask",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.projects.UpdateProject(request, metadata=user.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, code
    stranger = await admin.new_user()
    assert await code_of(rename(stranger, p.id, "mine")) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(
            stranger.projects.DeleteProject(
                ppb.DeleteProjectRequest(project_id=p.id), metadata=stranger.md
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    got = await user.projects.GetProject(ppb.GetProjectRequest(project_id=p.id), metadata=user.md)
    assert got.project.name == p.name


async def test_concurrent_renames_to_one_name(user: ApiClient) -> None:
    """Two projects renamed to one name at once: exactly one wins (the database decides)."""
    for round_ in range(4):
        a = await user.new_project()
        b = await user.new_project()
        target = f"same-{round_}-{a.id}"
        codes = await asyncio.gather(
            code_of(rename(user, a.id, target)), code_of(rename(user, b.id, target))
        )
        assert sorted(c.name for c in codes) == ["ALREADY_EXISTS", "OK"]


async def test_delete_project_refused_while_submitted_then_cascades(
    runnerless_admin: ApiClient, service_md: Any, database_url: str
) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/a", well="A01")]
        ),
        metadata=user.md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.projects.DeleteProject(
            ppb.DeleteProjectRequest(project_id=pid), metadata=user.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "PROJECT_IN_USE"
    assert await fetch(database_url, "SELECT id FROM api.datasets WHERE id = $1", did)
    await finish(user, service_md, job_id)
    await user.projects.DeleteProject(ppb.DeleteProjectRequest(project_id=pid), metadata=user.md)
    assert (
        await code_of(
            user.projects.GetProject(ppb.GetProjectRequest(project_id=pid), metadata=user.md)
        )
        == grpc.StatusCode.NOT_FOUND
    )
    for table, column in [
        ("datasets", "project_id"),
        ("workflows", "project_id"),
        ("project_members", "project_id"),
    ]:
        assert not await fetch(database_url, f"SELECT 1 FROM api.{table} WHERE {column} = $1", pid)
    for table in ("images", "image_facets"):
        assert not await fetch(
            database_url, f"SELECT 1 FROM api.{table} WHERE dataset_id = $1", did
        )
    assert not await fetch(
        database_url, "SELECT 1 FROM api.workflow_tasks WHERE workflow_id = $1", wid
    )
    # The job is kept, its links cleared; its dumps still say what it ran on.
    [job] = await fetch(
        database_url,
        "SELECT project_id, workflow_id, dataset_id, dataset_dump FROM api.jobs WHERE id = $1",
        job_id,
    )
    assert (job["project_id"], job["workflow_id"], job["dataset_id"]) == (None, None, None)
    assert job["dataset_dump"]
    # The name is free again.
    await user.new_project(f"p-again-{pid}")


# --- datasets ---------------------------------------------------------------------------------


async def update_dataset(client: ApiClient, pid: int, did: int, dataset: Any, *paths: str) -> Any:
    return await client.datasets.UpdateDataset(
        dpb.UpdateDatasetRequest(
            project_id=pid, dataset_id=did, dataset=dataset, update_mask=mask(*paths)
        ),
        metadata=client.md,
    )


async def test_update_dataset_name_filters_and_zarr_dir(user: ApiClient) -> None:
    pid, did = await make_dataset(user, "/zarr/one")
    filters = image_pb2.Filters(types={"3D": True})
    filters.attributes["well"].string_value = "A01"
    got = await update_dataset(
        user, pid, did, project_pb2.Dataset(name="renamed", filters=filters), "name", "filters"
    )
    assert got.dataset.name == "renamed" and dict(got.dataset.filters.types) == {"3D": True}
    # Filters are replaced as a whole, not merged.
    got = await update_dataset(
        user,
        pid,
        did,
        project_pb2.Dataset(filters=image_pb2.Filters(types={"2D": True})),
        "filters",
    )
    assert dict(got.dataset.filters.types) == {"2D": True}
    assert not got.dataset.filters.attributes
    # zarr_dir moves freely while the dataset has no images (normalised as on create).
    got = await update_dataset(
        user, pid, did, project_pb2.Dataset(zarr_dir="/zarr/two/"), "zarr_dir"
    )
    assert got.dataset.zarr_dir == "/zarr/two" and got.dataset.name == "renamed"
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/two/a")]
        ),
        metadata=user.md,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update_dataset(
            user,
            pid,
            did,
            project_pb2.Dataset(name="x", zarr_dir="/zarr/three"),
            "name",
            "zarr_dir",
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "DATASET_HAS_IMAGES"
    got_now = await user.datasets.GetDataset(
        dpb.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
    )
    assert (got_now.dataset.zarr_dir, got_now.dataset.name) == ("/zarr/two", "renamed")
    # The current value is no change.
    got = await update_dataset(
        user, pid, did, project_pb2.Dataset(zarr_dir="/zarr/two"), "zarr_dir"
    )
    assert got.dataset.zarr_dir == "/zarr/two"


async def test_update_dataset_refusals(user: ApiClient, admin: ApiClient) -> None:
    pid, did = await make_dataset(user)
    for dataset, paths, field in [
        (project_pb2.Dataset(name="x"), (), "update_mask"),
        (project_pb2.Dataset(name=" "), ("name",), "dataset.name"),
        (project_pb2.Dataset(zarr_dir="relative"), ("zarr_dir",), "dataset.zarr_dir"),
        (project_pb2.Dataset(zarr_dir="s3://bucket/x"), ("zarr_dir",), "dataset.zarr_dir"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await update_dataset(user, pid, did, dataset, *paths)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error_details(err.value)[1]
    stranger = await admin.new_user()
    theirs = await stranger.new_project()
    assert (
        await code_of(update_dataset(stranger, pid, did, project_pb2.Dataset(name="x"), "name"))
        == grpc.StatusCode.NOT_FOUND
    )
    # A dataset of another project named through one's own project: NOT_FOUND too.
    assert (
        await code_of(
            update_dataset(stranger, theirs.id, did, project_pb2.Dataset(name="x"), "name")
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(
            stranger.datasets.DeleteDataset(
                dpb.DeleteDatasetRequest(project_id=theirs.id, dataset_id=did), metadata=stranger.md
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    got = await user.datasets.GetDataset(
        dpb.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
    )
    assert got.dataset.name == "d"


async def test_delete_dataset_refused_while_submitted(
    runnerless_admin: ApiClient, service_md: Any, database_url: str
) -> None:
    user = await runnerless_admin.new_user()
    pid, did, wid, job_id = await submitted_job(user, task_kw={"command_non_parallel": "/bin/true"})
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/a", well="A01")]
        ),
        metadata=user.md,
    )
    request = dpb.DeleteDatasetRequest(project_id=pid, dataset_id=did)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.datasets.DeleteDataset(request, metadata=user.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "DATASET_IN_USE"
    assert (await query(user, pid, did)).total_count == 1
    await finish(user, service_md, job_id)
    await user.datasets.DeleteDataset(request, metadata=user.md)
    assert (
        await code_of(
            user.datasets.GetDataset(
                dpb.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    for table in ("images", "image_facets"):
        assert not await fetch(
            database_url, f"SELECT 1 FROM api.{table} WHERE dataset_id = $1", did
        )
    [job] = await fetch(
        database_url,
        "SELECT project_id, workflow_id, dataset_id FROM api.jobs WHERE id = $1",
        job_id,
    )
    assert (job["project_id"], job["workflow_id"], job["dataset_id"]) == (pid, wid, None)


# --- images -----------------------------------------------------------------------------------


async def test_update_image_replaces_wholesale_and_keeps_facets_exact(
    user: ApiClient, database_url: str
) -> None:
    pid, did = await make_dataset(user)
    first = image("/zarr/a", well="A01", n=1)
    first.types["3D"] = True
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[first, image("/zarr/b", "/zarr/a", well="B01")]
        ),
        metadata=user.md,
    )
    new = image("/zarr/a", well="C01")
    new.types["2D"] = True

    async def update(msg: image_pb2.Image, *paths: str) -> image_pb2.Image:
        got = await user.images.UpdateImage(
            image_service_pb2.UpdateImageRequest(
                project_id=pid, dataset_id=did, image=msg, update_mask=mask(*paths)
            ),
            metadata=user.md,
        )
        return got.image

    got = await update(new, "attributes")
    assert got.attributes["well"].string_value == "C01" and "n" not in got.attributes
    assert dict(got.types) == {"3D": True}  # types not in the mask: kept
    await assert_facets_exact(database_url, did)
    got = await update(new, "types")
    assert dict(got.types) == {"2D": True}
    await assert_facets_exact(database_url, did)
    # origin never changes, whatever the message says.
    moved = image("/zarr/b", "/zarr/elsewhere", well="B02")
    got = await update(moved, "attributes", "types")
    assert got.origin == "/zarr/a" and dict(got.types) == {}
    await assert_facets_exact(database_url, did)
    page = await query(user, pid, did)
    assert sorted(page.attributes["well"]) == ["B02", "C01"]
    assert "n" not in page.attributes and sorted(page.types) == ["2D"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(image("/zarr/missing", well="x"), "attributes")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    null = image("/zarr/a")
    null.attributes["well"].Clear()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(null, "attributes")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(new)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_images_one_or_a_batch_all_or_nothing(
    user: ApiClient, admin: ApiClient, database_url: str
) -> None:
    pid, did = await make_dataset(user)
    batch = [image(f"/zarr/{i}", well=f"W{i % 3}", idx=i) for i in range(10)]
    for i, img in enumerate(batch):
        img.types["odd"] = i % 2 == 1
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
        metadata=user.md,
    )

    async def delete(*urls: str) -> int:
        got = await user.images.DeleteImages(
            image_service_pb2.DeleteImagesRequest(project_id=pid, dataset_id=did, zarr_urls=urls),
            metadata=user.md,
        )
        return got.deleted_count

    assert await delete("/zarr/0") == 1
    await assert_facets_exact(database_url, did)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delete("/zarr/1", "/zarr/0")  # /zarr/0 is gone: nothing removed
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delete("/zarr/1", "/zarr/1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await query(user, pid, did)).total_count == 9
    assert await delete("/zarr/1", "/zarr/3", "/zarr/5", "/zarr/7", "/zarr/9") == 5
    await assert_facets_exact(database_url, did)
    page = await query(user, pid, did)
    assert [i.zarr_url for i in page.images] == ["/zarr/2", "/zarr/4", "/zarr/6", "/zarr/8"]
    assert list(page.types) == ["odd"]
    got = await user.datasets.GetDataset(
        dpb.GetDatasetRequest(project_id=pid, dataset_id=did), metadata=user.md
    )
    assert got.dataset.image_count == 4
    # The list goes on: new images come after the remaining ones, facets still exact.
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/0", well="W9")]
        ),
        metadata=user.md,
    )
    await assert_facets_exact(database_url, did)
    assert [i.zarr_url for i in (await query(user, pid, did)).images][-1] == "/zarr/0"
    stranger = await admin.new_user()
    assert (
        await code_of(
            stranger.images.DeleteImages(
                image_service_pb2.DeleteImagesRequest(
                    project_id=pid, dataset_id=did, zarr_urls=["/zarr/2"]
                ),
                metadata=stranger.md,
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(
            stranger.images.UpdateImage(
                image_service_pb2.UpdateImageRequest(
                    project_id=pid,
                    dataset_id=did,
                    image=image("/zarr/2"),
                    update_mask=mask("attributes"),
                ),
                metadata=stranger.md,
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (await query(user, pid, did)).total_count == 5


async def test_list_datasets_across_the_callers_projects(user: ApiClient, admin: ApiClient) -> None:
    mine = [await make_dataset(user) for _ in range(3)]
    other = await admin.new_user()
    await make_dataset(other)
    seen: list[int] = []
    token = ""
    while True:
        page = await user.datasets.ListDatasets(
            dpb.ListDatasetsRequest(project_id=0, page_size=2, page_token=token),
            metadata=user.md,
        )
        assert all(not d.history for d in page.datasets)  # history only when asked
        seen.extend(d.id for d in page.datasets)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(did for _, did in mine)
