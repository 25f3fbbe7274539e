"""ListProjects throughput and latency against one api process.

The load generator runs ``concurrency`` asyncio tasks on one grpc.aio channel, each sending the
next request as soon as the previous answer arrives (closed loop, like locust users with no
wait time). With ``processes > 1`` the tasks are split over that many client processes, each
with its own channel, started together; their results are merged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from bench.client import ApiClient
from bench.stats import CpuMeter, summary_ms
from fractal.v2 import project_service_pb2, project_service_pb2_grpc
from fractal_grpc.client import open_channel

PROJECTS_PER_USER = 10


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, of the calls that completed inside the window
    window: float  # seconds
    client_cpu: float  # CPU seconds of the client process(es) during the whole run
    errors: int


async def _closed_loop(
    address: str, token: str, concurrency: int, start_at: float, warmup: float, duration: float
) -> LoadResult:
    """Run from ``start_at`` (time.time()) for warmup + duration; measure the last part."""
    async with open_channel(address) as channel:
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        request = project_service_pb2.ListProjectsRequest()
        await stub.ListProjects(request, metadata=md)  # connect before the clock starts
        await asyncio.sleep(max(0.0, start_at - time.time()))
        begin = time.perf_counter()
        window_start = begin + warmup
        end = window_start + duration
        latencies: list[float] = []
        errors = 0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime

        async def worker() -> None:
            nonlocal errors
            perf = time.perf_counter
            while (t0 := perf()) < end:
                try:
                    await stub.ListProjects(request, metadata=md)
                except Exception:  # noqa: BLE001 - counted; the run goes on
                    errors += 1
                    continue
                t1 = perf()
                if t1 >= window_start and t1 <= end:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return LoadResult(latencies, duration, usage.ru_utime + usage.ru_stime - cpu_before, errors)


def _process_entry(
    address: str, token: str, concurrency: int, start_at: float, warmup: float, duration: float
) -> LoadResult:
    return asyncio.run(_closed_loop(address, token, concurrency, start_at, warmup, duration))


async def run_load(
    address: str,
    token: str,
    *,
    concurrency: int,
    processes: int,
    warmup: float,
    duration: float,
    pids: dict[str, int],
) -> dict[str, object]:
    meter = CpuMeter(pids)
    if processes <= 1:
        meter.start()
        result = await _closed_loop(address, token, concurrency, time.time(), warmup, duration)
        cpu = meter.stop()
        results = [result]
    else:
        shares = [
            concurrency // processes + (i < concurrency % processes) for i in range(processes)
        ]
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
            start_at = time.time() + 3.0  # time for the workers to start and import
            futures = [
                loop.run_in_executor(
                    pool, _process_entry, address, token, share, start_at, warmup, duration
                )
                for share in shares
            ]
            await asyncio.sleep(max(0.0, start_at - time.time()))
            meter.start()
            results = list(await asyncio.gather(*futures))
            cpu = meter.stop()
        # the meter's "client" is this (idle) parent; use the workers' own accounting.
        cpu["client"] = round(sum(r.client_cpu for r in results) / (warmup + duration), 2)
    latencies = [lat for r in results for lat in r.latencies]
    return {
        "concurrency": concurrency,
        "client_processes": max(1, processes),
        "duration_s": duration,
        "rpc_per_s": round(len(latencies) / duration, 1),
        "errors": sum(r.errors for r in results),
        **summary_ms(latencies),
        "cpu_cores_used": cpu,
    }


async def bench_list_projects(
    address: str,
    admin: ApiClient,
    *,
    levels: list[tuple[int, int]],
    warmup: float,
    duration: float,
    pids: dict[str, int],
) -> dict[str, object]:
    """``levels``: (concurrency, client processes) pairs, measured in this order."""
    user = await admin.new_user()
    for i in range(PROJECTS_PER_USER):
        await user.new_project(f"bench-project-{i}")
    runs = []
    for concurrency, processes in levels:
        run = await run_load(
            address,
            user.token,
            concurrency=concurrency,
            processes=processes,
            warmup=warmup,
            duration=duration,
            pids=pids,
        )
        print(
            f"  ListProjects c={concurrency} clients={processes}: {run['rpc_per_s']} RPC/s, "
            f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, cpu {run['cpu_cores_used']}",
            flush=True,
        )
        runs.append(run)
    return {"projects_per_user": PROJECTS_PER_USER, "runs": runs}
