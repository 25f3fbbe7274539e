"""ExportDataset / ImportDataset: a dataset with its image list, out and back in, exactly."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from test_data_updates import code_of
from test_images_jobs_api import assert_facets_exact, image, make_dataset

from fractal.v2 import dataset_service_pb2 as dpb
from fractal.v2 import image_pb2, image_service_pb2, project_pb2
from helpers import ApiClient, error_details


async def export(client: ApiClient, pid: int, did: int) -> list[dpb.ExportDatasetResponse]:
    stream = client.datasets.ExportDataset(
        dpb.ExportDatasetRequest(project_id=pid, dataset_id=did), metadata=client.md
    )
    return [message async for message in stream]


def import_messages(
    pid: int, exported: list[dpb.ExportDatasetResponse], name: str, batch: int, **kw: Any
) -> list[dpb.ImportDatasetRequest]:
    head = exported[0]
    images = [i for m in exported for i in m.images]
    messages = [
        dpb.ImportDatasetRequest(images=images[start : start + batch])
        for start in range(0, len(images), batch)
    ] or [dpb.ImportDatasetRequest()]
    messages[0].project_id = pid
    messages[0].name = name
    messages[0].zarr_dir = head.zarr_dir
    messages[0].filters.CopyFrom(head.filters)
    for key, value in kw.items():
        setattr(messages[0], key, value)
    return messages


async def test_export_import_round_trip_100k_images(user: ApiClient, database_url: str) -> None:
    pid, did = await make_dataset(user, "/zarr/big")
    batch = []
    for i in range(100_000):
        img = image(f"/zarr/big/plate.zarr/{i // 1000}/{i % 1000}/0", well=f"W{i % 96}", idx=i)
        if i % 7 == 0:
            img.origin = "/zarr/big/raw"
            img.attributes["ratio"].number_value = i / 7
        img.types["3D"] = i % 2 == 0
        batch.append(img)
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(project_id=pid, dataset_id=did, images=batch),
        metadata=user.md,
        timeout=300,
    )
    filters = image_pb2.Filters(types={"3D": True})
    filters.attributes["well"].string_value = "W1"
    await user.datasets.UpdateDataset(
        dpb.UpdateDatasetRequest(
            project_id=pid,
            dataset_id=did,
            dataset=project_pb2.Dataset(filters=filters),
            update_mask={"paths": ["filters"]},
        ),
        metadata=user.md,
    )
    exported = await export(user, pid, did)
    assert exported[0].name == "d" and exported[0].zarr_dir == "/zarr/big"
    assert exported[0].image_count == 100_000 and exported[0].filters == filters
    assert all(len(m.images) <= 10_000 for m in exported)
    assert [i for m in exported for i in m.images] == batch  # every field, in list order

    target = await user.new_project()
    created = await user.datasets.ImportDataset(
        iter(import_messages(target.id, exported, "copy", 25_000)), metadata=user.md, timeout=300
    )
    assert created.dataset.image_count == 100_000 and created.dataset.name == "copy"
    again = await export(user, target.id, created.dataset.id)
    assert [i for m in again for i in m.images] == batch
    assert again[0].filters == filters and again[0].zarr_dir == "/zarr/big"
    await assert_facets_exact(database_url, created.dataset.id)


async def test_import_is_all_or_nothing_and_idempotent(user: ApiClient, admin: ApiClient) -> None:
    pid, did = await make_dataset(user, "/zarr/s")
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=pid, dataset_id=did, images=[image("/zarr/s/a", well="A01")]
        ),
        metadata=user.md,
    )
    exported = await export(user, pid, did)

    async def imported(messages: list[dpb.ImportDatasetRequest]) -> Any:
        return await user.datasets.ImportDataset(iter(messages), metadata=user.md)

    # An image outside zarr_dir, in the second message: nothing is created.
    bad = import_messages(pid, exported, "bad", 1)
    bad.append(dpb.ImportDatasetRequest(images=[image("/elsewhere/b")]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await imported(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err.value)[1] == ["images[1].zarr_url"]
    # A later message breaking a field rule (validated as it is read): nothing is created.
    nul = import_messages(pid, exported, "nul", 1)
    nul.append(dpb.ImportDatasetRequest(images=[image_pb2.Image(zarr_url="/zarr/s/\x00")]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await imported(nul)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Departure (reference §3.2 import checks only the prefix): as in AddImages, a zarr_url
    # repeated across the stream, or equal to zarr_dir, is refused and nothing is created.
    for name, extra, field in (
        ("twice", image("/zarr/s/a"), "images[1].zarr_url"),
        ("itself", image("/zarr/s"), "images[1].zarr_url"),
    ):
        messages = import_messages(pid, exported, name, 1)
        messages.append(dpb.ImportDatasetRequest(images=[extra]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await imported(messages)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(err.value)[1] == [field]
    # A header field in a later message.
    late = import_messages(pid, exported, "late", 1)
    late.append(dpb.ImportDatasetRequest(name="x"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await imported(late)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await user.datasets.ListDatasets(
        dpb.ListDatasetsRequest(project_id=pid), metadata=user.md
    )
    assert [d.name for d in listed.datasets] == ["d"]
    # The same request_id twice: one dataset; with other content: REQUEST_ID_REUSED.
    first = await imported(import_messages(pid, exported, "copy", 1, request_id="k1"))
    second = await imported(import_messages(pid, exported, "copy", 1, request_id="k1"))
    assert first.dataset.id == second.dataset.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await imported(import_messages(pid, exported, "copy2", 1, request_id="k1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Not the caller's project or dataset: NOT_FOUND.
    stranger = await admin.new_user()
    assert (
        await code_of(
            stranger.datasets.ImportDataset(
                iter(import_messages(pid, exported, "mine", 1)), metadata=stranger.md
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await export(stranger, pid, did)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # An empty dataset exports one header message.
    empty_pid, empty = await make_dataset(user)
    [only] = await export(user, empty_pid, empty)
    assert only.name == "d" and not only.images
