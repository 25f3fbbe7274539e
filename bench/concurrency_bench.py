"""The delay a largest-allowed request adds to a concurrent cheap call.

One client sends ListProjects in a closed loop (c=1) on its own channel, first alone (the
baseline), then while another channel sends the largest request api accepts in normal use: an
AddImages of 100,000 images (~10 MB). The figures are ListProjects' latencies in both phases;
the difference of the maxima is the delay the large request adds to a call that arrives while
it is being handled.
"""

from __future__ import annotations

import asyncio
import time

from bench.client import ApiClient, make_images
from bench.stats import summary_ms
from fractal.v2 import image_service_pb2, project_service_pb2, project_service_pb2_grpc
from fractal_grpc.client import open_channel


async def _list_projects_until(address: str, token: str, done: asyncio.Event) -> list[float]:
    async with open_channel(address) as channel:
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        request = project_service_pb2.ListProjectsRequest()
        await stub.ListProjects(request, metadata=md)  # connected before measuring
        latencies: list[float] = []
        while not done.is_set():
            t0 = time.perf_counter()
            await stub.ListProjects(request, metadata=md)
            latencies.append(time.perf_counter() - t0)
        return latencies


async def bench_delay(
    address: str, user: ApiClient, zarr_root: str, *, images: int, baseline_seconds: float
) -> dict[str, object]:
    # Baseline: ListProjects alone.
    stop = asyncio.Event()
    alone = asyncio.create_task(_list_projects_until(address, user.token, stop))
    await asyncio.sleep(baseline_seconds)
    stop.set()
    baseline = await alone

    project_id = await user.new_project(f"bench-delay-{time.time_ns()}")
    zarr_dir = f"{zarr_root}/delay"
    dataset_id = await user.new_dataset(project_id, zarr_dir)
    # Serialized beforehand: 10 MB take this (client) process ~1.5 s, which would stall its own
    # ListProjects loop and be counted as the server's delay.
    request = image_service_pb2.AddImagesRequest(
        project_id=project_id, dataset_id=dataset_id, images=make_images(zarr_dir, 0, images)
    ).SerializeToString()
    done = asyncio.Event()
    async with open_channel(address) as channel:
        add_images = channel.unary_unary(
            "/fractal.v2.ImageService/AddImages",
            request_serializer=None,
            response_deserializer=image_service_pb2.AddImagesResponse.FromString,
        )
        during = asyncio.create_task(_list_projects_until(address, user.token, done))
        await asyncio.sleep(0.5)  # ListProjects running before the large request arrives
        t0 = time.perf_counter()
        added = (await add_images(request, metadata=user.md)).added_count
        seconds = time.perf_counter() - t0
        done.set()
        concurrent = await during
    assert added == images, (added, images)
    alone_ms, during_ms = summary_ms(baseline), summary_ms(concurrent)
    delay = round(during_ms["max_ms"] - alone_ms["p50_ms"], 1)
    print(
        f"  ListProjects alone p50 {alone_ms['p50_ms']} ms; during AddImages {images:,} "
        f"({seconds:.2f} s): {during_ms['count']} calls, p50 {during_ms['p50_ms']} ms, "
        f"max {during_ms['max_ms']} ms (added delay {delay} ms)",
        flush=True,
    )
    return {
        "large_request": f"AddImages of {images} images",
        "large_request_seconds": round(seconds, 3),
        "list_projects_alone": alone_ms,
        "list_projects_during": during_ms,
        "added_delay_ms": delay,
    }
