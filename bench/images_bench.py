"""AddImages: one large call, one image per call as the list grows, and a large dataset loaded
in batches. Request messages are built before the clock starts; each timing is the RPC alone
(client serialisation, server validation, the insert and the facet update, the commit)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc.aio

from bench.client import ApiClient, image_records, make_images
from bench.reference import RefClient
from bench.stats import CpuMeter


@dataclass
class LargeDataset:
    """A dataset filled by ``load_large``; the query benchmark reuses it."""

    project_id: int
    dataset_id: int
    size: int
    zarr_dir: str
    batch_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# When a large call fails (e.g. a server-side limit), its range is retried in calls of this size
# so that the dataset still gets loaded for the query benchmark; the failure is reported.
FALLBACK_BATCH = 25_000


async def bench_bulk(
    client: ApiClient, project_id: int, zarr_root: str, count: int, pids: dict[str, int]
) -> dict[str, object]:
    """``count`` images in one AddImages call, into an empty dataset."""
    zarr_dir = f"{zarr_root}/bulk"
    dataset_id = await client.new_dataset(project_id, zarr_dir)
    t0 = time.perf_counter()
    images = make_images(zarr_dir, 0, count)
    build = time.perf_counter() - t0
    meter = CpuMeter(pids)
    meter.start()
    t0 = time.perf_counter()
    added = await client.add_images(project_id, dataset_id, images)
    seconds = time.perf_counter() - t0
    cpu = meter.stop()
    assert added == count, (added, count)
    print(f"  AddImages {count} in one call: {seconds:.2f} s, cpu {cpu}", flush=True)
    return {
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds),
        "client_build_seconds": round(build, 3),
        "cpu_cores_used": cpu,
    }


async def _add_one_by_one(
    client: ApiClient, project_id: int, dataset_id: int, zarr_dir: str, start: int, count: int
) -> float:
    images = make_images(zarr_dir, start, count)
    t0 = time.perf_counter()
    for image in images:
        await client.add_images(project_id, dataset_id, [image])
    return time.perf_counter() - t0


async def bench_single(
    client: ApiClient,
    project_id: int,
    zarr_root: str,
    *,
    total: int,
    block: int,
    full: bool,
) -> dict[str, object]:
    """One image per AddImages call (sequential, as a client adding images one at a time).

    ``full``: every image from 0 to ``total`` one by one, timed per ``block``. Otherwise the first
    ``block`` one by one, then the list is filled up to ``total - block`` with one bulk call
    (not timed), then the last ``block`` one by one.
    """
    zarr_dir = f"{zarr_root}/single"
    dataset_id = await client.new_dataset(project_id, zarr_dir)
    blocks: list[dict[str, object]] = []
    block_seconds: list[float] = []

    async def timed_block(start: int) -> None:
        seconds = await _add_one_by_one(client, project_id, dataset_id, zarr_dir, start, block)
        block_seconds.append(seconds)
        blocks.append(
            {
                "from": start,
                "to": start + block,
                "seconds": round(seconds, 3),
                "images_per_s": round(block / seconds, 1),
            }
        )
        print(f"  AddImages one per call, {start}-{start + block}: {block / seconds:.0f}/s")

    await timed_block(0)
    if full:
        for start in range(block, total, block):
            await timed_block(start)
    else:
        filler = total - 2 * block
        if filler > 0:
            await client.add_images(project_id, dataset_id, make_images(zarr_dir, block, filler))
        await timed_block(total - block)
    result: dict[str, object] = {
        "total": total,
        "block": block,
        "all_one_by_one": full,
        "blocks": blocks,
        "first_block_per_s": blocks[0]["images_per_s"],
        "last_block_per_s": blocks[-1]["images_per_s"],
    }
    if full:
        seconds = sum(block_seconds)
        result["overall_seconds"] = round(seconds, 2)
        result["overall_per_s"] = round(total / seconds, 1)
    return result


async def load_large(
    client: ApiClient, project_id: int, zarr_root: str, *, size: int, batch: int
) -> LargeDataset:
    """A dataset of ``size`` images, added in calls of ``batch`` images."""
    zarr_dir = f"{zarr_root}/large"
    dataset_id = await client.new_dataset(project_id, zarr_dir)
    data = LargeDataset(project_id, dataset_id, size, zarr_dir)

    async def add(start: int, count: int) -> None:
        images = make_images(zarr_dir, start, count)
        t0 = time.perf_counter()
        await client.add_images(project_id, dataset_id, images)
        data.batch_seconds.append(time.perf_counter() - t0)
        print(
            f"  large dataset: {start + count} images (last call {data.batch_seconds[-1]:.2f} s)",
            flush=True,
        )

    for start in range(0, size, batch):
        count = min(batch, size - start)
        try:
            await add(start, count)
        except grpc.aio.AioRpcError as exc:
            if count <= FALLBACK_BATCH:
                raise
            note = (
                f"a call of {count} images failed ({exc.code().name}: {exc.details()}); "
                f"images {start}-{start + count} were added in calls of {FALLBACK_BATCH}"
            )
            print(f"  large dataset: {note}", flush=True)
            data.notes.append(note)
            for sub in range(start, start + count, FALLBACK_BATCH):
                await add(sub, min(FALLBACK_BATCH, start + count - sub))
    return data


def large_result(data: LargeDataset, batch: int, wall: float) -> dict[str, object]:
    rpc = sum(data.batch_seconds)
    return {
        "images": data.size,
        "batch": batch,
        "rpc_seconds_total": round(rpc, 2),
        "wall_seconds_total": round(wall, 2),
        "batch_seconds": [round(s, 3) for s in data.batch_seconds],
        "images_per_s": round(data.size / rpc),
        "calls": len(data.batch_seconds),
        "notes": data.notes,
    }


def bench_single_reference(
    client: RefClient, zarr_root: str, *, total: int, block: int
) -> dict[str, object]:
    """The reference's POST …/images/ one image per call: the first ``block`` images of an
    empty dataset, then the last ``block`` of ``total`` (the dataset filled up to
    ``total - block`` first by one import, not timed). Same images as ours."""
    project_id = client.new_project("bench-images-single")
    zarr_dir = f"{zarr_root}/ref-single"
    first_dataset = client.new_dataset(project_id, zarr_dir)
    blocks: list[dict[str, object]] = []

    def timed(dataset_id: int, start: int) -> None:
        records = image_records(zarr_dir, start, block)
        t0 = time.perf_counter()
        for record in records:
            client.add_image(project_id, dataset_id, record)
        seconds = time.perf_counter() - t0
        blocks.append(
            {
                "from": start,
                "to": start + block,
                "seconds": round(seconds, 3),
                "images_per_s": round(block / seconds, 1),
            }
        )
        print(
            f"  reference POST images/ one per call, {start}-{start + block}: "
            f"{block / seconds:.0f}/s",
            flush=True,
        )

    timed(first_dataset, 0)
    filled = client.import_dataset(project_id, zarr_dir, image_records(zarr_dir, 0, total - block))
    timed(filled, total - block)
    return {"total": total, "block": block, "blocks": blocks}
