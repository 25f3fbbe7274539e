"""ExportDataset: the whole image list of a dataset streamed to the client (header, then batches
of images), timed from the call to the last message, every image counted and parsed by the
client; and the reference's GET …/dataset/{id}/export/ (one JSON answer) of a dataset of the
same images, taking turns with ours (bench/interleave.py).

Sizes: the large dataset of the image section (1,000,000 images; quick 100,000), ours only
(the reference would have to be given a 1,000,000-image import in one JSON request first); and
100,000 images on both systems, for the ratio.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.client import ApiClient, image_records, make_images
from bench.interleave import median, ratio, turn_order
from bench.reference import RefClient
from bench.stats import CpuMeter
from fractal.v2 import dataset_service_pb2


async def export_ours(client: ApiClient, project_id: int, dataset_id: int) -> tuple[float, int]:
    """(seconds, images received) of one ExportDataset call."""
    request = dataset_service_pb2.ExportDatasetRequest(project_id=project_id, dataset_id=dataset_id)
    received = 0
    t0 = time.perf_counter()
    async for message in client.datasets.ExportDataset(request, metadata=client.md):
        received += len(message.images)
    return time.perf_counter() - t0, received


def export_reference(client: RefClient, project_id: int, dataset_id: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    answer = client.call("GET", f"/api/v2/project/{project_id}/dataset/{dataset_id}/export/")
    return time.perf_counter() - t0, len(answer["images"])


def _entry(size: int, seconds: list[float]) -> dict[str, Any]:
    med = median(seconds)
    return {
        "images": size,
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": None if med is None else round(med, 3),
        "images_per_s": None if not med else round(size / med),
    }


async def bench_export(
    client: ApiClient,
    large: tuple[int, int, int],
    reference: RefClient | None,
    zarr_root: str,
    *,
    large_runs: int,
    compare_images: int,
    compare_runs: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """``large``: (project, dataset, size) of ours. Then ``compare_images`` on both."""
    project_id, dataset_id, size = large
    runs: list[float] = []
    cpu: list[dict[str, float]] = []
    for _ in range(large_runs):
        meter = CpuMeter(pids)
        meter.start()
        seconds, received = await export_ours(client, project_id, dataset_id)
        cpu.append(meter.stop())
        if received != size:
            raise RuntimeError(f"ExportDataset streamed {received} images, expected {size}")
        runs.append(seconds)
        print(f"  ExportDataset {size:,} images: {seconds:.2f} s ({size / seconds:,.0f}/s)")
    result: dict[str, Any] = {"large": {**_entry(size, runs), "cpu_cores_used": cpu}}

    zarr_dir = f"{zarr_root}/export-{compare_images}"
    our_project = await client.new_project("bench-export")
    our_dataset = await client.new_dataset(our_project, zarr_dir)
    await client.add_images(our_project, our_dataset, make_images(zarr_dir, 0, compare_images))
    sides = ["ours"]
    ref_ids = (0, 0)
    if reference is not None:
        ref_project = reference.new_project("bench-export")
        records = image_records(zarr_dir, 0, compare_images)
        ref_ids = (ref_project, reference.import_dataset(ref_project, zarr_dir, records))
        sides.append("reference")
    times: dict[str, list[float]] = {side: [] for side in sides}
    for index in range(compare_runs):
        for side in turn_order(sides, index):
            if side == "ours":
                seconds, received = await export_ours(client, our_project, our_dataset)
            else:
                assert reference is not None
                seconds, received = await asyncio.to_thread(export_reference, reference, *ref_ids)
            if received != compare_images:
                raise RuntimeError(f"{side} export: {received} images, not {compare_images}")
            times[side].append(seconds)
    compare: dict[str, Any] = {side: _entry(compare_images, times[side]) for side in sides}
    if reference is not None:
        compare["reference_over_ours"] = ratio(
            compare["reference"]["median_seconds"], compare["ours"]["median_seconds"]
        )
    print(f"  export of {compare_images:,} images: {compare}", flush=True)
    result["compare"] = compare
    return result
