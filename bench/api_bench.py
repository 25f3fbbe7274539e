"""ListProjects throughput and latency against one api process, with two load generators.

Python client: ``concurrency`` asyncio tasks on one grpc.aio channel, each sending the next
request as soon as the previous answer arrives (closed loop, like locust users with no wait
time). With ``processes > 1`` the tasks are split over that many client processes, each with
its own channel, started together; their results are merged. On a 2-core machine this client
takes CPU the server would otherwise have.

h2load (nghttp2-client): a native HTTP/2 load generator sending the gRPC request as a POST
body, ``streams`` concurrent streams on each of ``connections`` connections. h2load sees only
HTTP statuses (a gRPC error is HTTP 200 with a grpc-status trailer and no DATA), so each run
sends a fixed number of requests and its received DATA bytes must equal requests × the length
of the gRPC frame of the expected answer.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import re
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.client import ApiClient
from bench.interleave import turn_order
from bench.reference import RefClient
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


async def list_projects_user(admin: ApiClient) -> ApiClient:
    """A new user who is a member of ``PROJECTS_PER_USER`` projects."""
    user = await admin.new_user()
    for i in range(PROJECTS_PER_USER):
        await user.new_project(f"bench-project-{i}")
    return user


async def bench_list_projects(
    address: str,
    user: ApiClient,
    *,
    levels: list[tuple[int, int]],
    warmup: float,
    duration: float,
    pids: dict[str, int],
) -> dict[str, object]:
    """Python client. ``levels``: (concurrency, client processes) pairs, measured in order."""
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
    return {"projects_per_user": PROJECTS_PER_USER, "load_generator": "grpc.aio", "runs": runs}


# --- h2load ---------------------------------------------------------------------------------

H2LOAD_MISSING = "h2load not found: apt-get install nghttp2-client"
LIST_PROJECTS_PATH = "/fractal.v2.ProjectService/ListProjects"
# The gRPC frame of an empty ListProjectsRequest: not compressed, length 0.
EMPTY_REQUEST_FRAME = b"\x00\x00\x00\x00\x00"


@dataclass
class H2loadRun:
    """What one h2load run reported: its summary lines and its per-request log."""

    requests: int  # asked for (-n)
    succeeded: int  # streams that completed (any HTTP status)
    status_2xx: int
    data_bytes: int  # response DATA payload received, all requests
    reported_rate: float  # h2load's own req/s (its clock includes connecting)
    latencies: list[float]  # seconds, requests with a 2xx status, from the log file
    span: float  # seconds from the first request's start to the last response's end
    output: str  # h2load's stdout


_REQUESTS_RE = re.compile(r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", re.M)
_STATUS_RE = re.compile(r"^status codes: (\d+) 2xx,", re.M)
_DATA_RE = re.compile(r"^traffic: .*, \S+ \((\d+)\) data$", re.M)
_FINISHED_RE = re.compile(r"^finished in \S+, ([\d.]+) req/s", re.M)


def _match_int(pattern: re.Pattern[str], text: str, group: int = 1) -> int:
    found = pattern.search(text)
    if found is None:
        raise RuntimeError(f"h2load output not understood ({pattern.pattern!r}):\n{text[-2000:]}")
    return int(found.group(group))


def _read_log(path: Path, requests: int) -> tuple[list[float], float]:
    """h2load --log-file rows: start (µs since the epoch), HTTP status (-1: failed stream),
    µs until the end of the response. Returns the 2xx latencies in seconds and the span."""
    latencies: list[float] = []
    first_start, last_end = math.inf, -math.inf
    rows = path.read_text().splitlines()
    if len(rows) != requests:
        raise RuntimeError(f"h2load's log {path.name} has {len(rows)} rows for {requests} requests")
    for row in rows:
        start, status, micros = (int(x) for x in row.split("\t")[:3])
        first_start = min(first_start, start)
        last_end = max(last_end, start + micros)
        if 200 <= status < 300:
            latencies.append(micros / 1e6)
    span = (last_end - first_start) / 1e6 if latencies else math.nan
    return latencies, span


def _parse(output: str, log: Path, requests: int) -> H2loadRun:
    found = _FINISHED_RE.search(output)
    latencies, span = _read_log(log, requests)
    return H2loadRun(
        requests=requests,
        succeeded=_match_int(_REQUESTS_RE, output, 2),
        status_2xx=_match_int(_STATUS_RE, output),
        data_bytes=_match_int(_DATA_RE, output),
        reported_rate=float(found.group(1)) if found else math.nan,
        latencies=latencies,
        span=span,
        output=output,
    )


def _h2load_argv(
    executable: str, address: str, token: str, body: Path, connections: int, streams: int
) -> list[str]:
    """Everything but -n and --log-file."""
    return [
        executable,
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        str(body),
        f"http://{address}{LIST_PROJECTS_PATH}",
    ]


async def _h2load(argv: list[str], requests: int, log: Path) -> H2loadRun:
    await asyncio.to_thread(log.unlink, missing_ok=True)  # h2load appends to its log file
    proc = await asyncio.create_subprocess_exec(
        *argv[:1],
        "-n",
        str(requests),
        "--log-file",
        str(log),
        *argv[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    lines = out.decode(errors="replace").splitlines()
    output = "\n".join(line for line in lines if not line.startswith("progress: "))
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with {proc.returncode}:\n{output[-2000:]}")
    return await asyncio.to_thread(_parse, output, log, requests)


def _errors(run: H2loadRun, frame_bytes: int) -> int:
    """Requests that did not complete with HTTP 2xx, or (at least) the number of answers whose
    DATA is missing or of the wrong length: a gRPC error comes as HTTP 200 without DATA."""
    failed = run.requests - min(run.succeeded, run.status_2xx)
    wrong_bodies = math.ceil(abs(run.requests * frame_bytes - run.data_bytes) / frame_bytes)
    return max(failed, wrong_bodies)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _round_requests(rate: float, seconds: float, streams: int) -> int:
    """About ``seconds`` of requests at ``rate``, two significant digits, at least 10 per
    stream."""
    n = max(10 * streams, rate * seconds)
    step = 10 ** max(0, math.floor(math.log10(n)) - 1)
    return int(round(n / step) * step)


async def run_h2load(
    argv: list[str],
    token: str,
    *,
    connections: int,
    streams: int,
    warmup_requests: int,
    duration: float,
    frame_bytes: int,
    pids: dict[str, int],
    workdir: Path,
) -> dict[str, object]:
    """A warm-up of ``warmup_requests``, then about ``duration`` seconds of requests (the count
    estimated from the warm-up's rate), measured. ``argv``: everything but -n and --log-file;
    ``frame_bytes``: the DATA bytes of one right answer."""
    name = f"{'h1-' if '--h1' in argv else ''}c{connections}-m{streams}"
    warm = await _h2load(argv, warmup_requests, workdir / f"{name}-warmup.tsv")
    warm_rate = warm.status_2xx / warm.span if warm.status_2xx else 0.0
    if warm.status_2xx == 0 or warm.data_bytes == 0:
        raise RuntimeError(
            f"h2load warm-up: {warm.status_2xx} of {warmup_requests} answers with HTTP 2xx, "
            f"{warm.data_bytes} DATA bytes:\n{warm.output[-2000:]}"
        )
    requests = _round_requests(warm_rate, duration, streams)

    meter = CpuMeter(pids)
    children_before = _children_cpu()
    wall_start = time.perf_counter()
    meter.start()
    run = await _h2load(argv, requests, workdir / f"{name}-measured.tsv")
    cpu = meter.stop()
    wall = time.perf_counter() - wall_start
    cpu["load_generator"] = round((_children_cpu() - children_before) / wall, 2)

    expected = requests * frame_bytes
    errors = _errors(run, frame_bytes)
    result: dict[str, object] = {
        "load_generator": "h2load",
        "concurrency": connections * streams,
        "client_processes": 1,
        "connections": connections,
        "streams_per_connection": streams,
        "requests": requests,
        "duration_s": round(run.span, 3),
        "rpc_per_s": round(len(run.latencies) / run.span, 1) if run.latencies else 0.0,
        "h2load_req_per_s": run.reported_rate,
        "errors": errors,
        "succeeded": run.succeeded,
        "status_2xx": run.status_2xx,
        "expected_frame_bytes": frame_bytes,
        "data_bytes": run.data_bytes,
        "expected_data_bytes": expected,
        **summary_ms(run.latencies),
        "cpu_cores_used": cpu,
        "warmup": {
            "requests": warmup_requests,
            "seconds": round(warm.span, 3),
            "rpc_per_s": round(warm_rate, 1),
            "errors": _errors(warm, frame_bytes),
        },
        "command": " ".join([*argv[:1], "-n", str(requests), *argv[1:]]).replace(token, "<token>"),
    }
    if errors:
        result["error"] = (
            f"at least {errors} of {requests} requests failed or answered wrongly: "
            f"{run.succeeded} completed, {run.status_2xx} with HTTP 2xx, "
            f"{run.data_bytes} DATA bytes received, {expected} expected "
            f"({requests} × {frame_bytes})"
        )
    return result


REF_LIST_PROJECTS_PATH = "/api/v2/project/"
# The reference answers ~10-50 times slower: its warm-up is this many requests at most.
REF_WARMUP_REQUESTS = 300


def _ref_h2load_argv(executable: str, address: str, token: str, connections: int) -> list[str]:
    """GET /api/v2/project/ over HTTP/1.1 (uvicorn has no HTTP/2): one request in flight per
    connection, so concurrency c is c connections."""
    return [
        executable,
        "--h1",
        "-c",
        str(connections),
        "-m",
        "1",
        "-t",
        "1",
        "-H",
        f"authorization: Bearer {token}",
        f"http://{address}{REF_LIST_PROJECTS_PATH}",
    ]


async def bench_list_projects_h2load(
    address: str,
    user: ApiClient,
    *,
    levels: list[tuple[int, int]],
    warmup_requests: int,
    duration: float,
    pids: dict[str, int],
    reference: tuple[str, RefClient] | None = None,
) -> dict[str, object]:
    """h2load. ``levels``: (connections, streams per connection) pairs, measured in order; with
    a reference, each level is also measured on it (c = connections × streams connections),
    the two taking turns."""
    executable = shutil.which("h2load")
    if executable is None:
        print(f"  ListProjects (h2load): skipped: {H2LOAD_MISSING}", flush=True)
        return {"skipped": H2LOAD_MISSING}
    response = await user.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=user.md
    )
    if len(response.projects) != PROJECTS_PER_USER:
        raise RuntimeError(
            f"ListProjects returned {len(response.projects)} projects, expected {PROJECTS_PER_USER}"
        )
    frame_bytes = 5 + len(response.SerializeToString())
    ref_bytes = 0
    if reference is not None:
        answer = reference[1].call("GET", REF_LIST_PROJECTS_PATH)
        if len(answer) != PROJECTS_PER_USER:
            raise RuntimeError(f"the reference listed {len(answer)} projects")
        ref_bytes = len(reference[1].raw("GET", REF_LIST_PROJECTS_PATH)[1])
    version = await _h2load_version(executable)
    runs: list[dict[str, object]] = []
    ref_runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fractal-bench-h2load-") as tmp:
        body = Path(tmp) / "request.bin"
        await asyncio.to_thread(body.write_bytes, EMPTY_REQUEST_FRAME)
        for index, (connections, streams) in enumerate(levels):
            sides = ["ours", "reference"] if reference is not None else ["ours"]
            for side in turn_order(sides, index):
                c = connections * streams
                if side == "ours":
                    level = f"c={c} (h2load -c {connections} -m {streams})"
                    argv = _h2load_argv(executable, address, user.token, body, connections, streams)
                    token, frame, warm = user.token, frame_bytes, warmup_requests
                    out, conns, per_conn = runs, connections, streams
                else:
                    assert reference is not None
                    level = f"reference c={c} (h2load --h1 -c {c})"
                    token, frame = reference[1].token, ref_bytes
                    argv = _ref_h2load_argv(executable, reference[0], token, c)
                    warm = min(warmup_requests, REF_WARMUP_REQUESTS)
                    out, conns, per_conn = ref_runs, c, 1
                out.append(
                    await _h2load_level(
                        level, argv, token, conns, per_conn, warm, duration, frame, pids, tmp
                    )
                )
    return {
        "projects_per_user": PROJECTS_PER_USER,
        "load_generator": "h2load",
        "h2load_version": version,
        "expected_frame_bytes": frame_bytes,
        "runs": runs,
        "reference_runs": ref_runs,
        "reference_answer_bytes": ref_bytes,
    }


async def _h2load_level(
    level: str,
    argv: list[str],
    token: str,
    connections: int,
    streams: int,
    warmup_requests: int,
    duration: float,
    frame_bytes: int,
    pids: dict[str, int],
    tmp: str,
) -> dict[str, object]:
    try:
        run = await run_h2load(
            argv,
            token,
            connections=connections,
            streams=streams,
            warmup_requests=warmup_requests,
            duration=duration,
            frame_bytes=frame_bytes,
            pids=pids,
            workdir=Path(tmp),
        )
    except Exception as exc:  # noqa: BLE001 - recorded; the next level still runs
        error = f"{type(exc).__name__}: {exc}"
        print(f"  ListProjects {level}: FAILED: {error}", flush=True)
        return {
            "load_generator": "h2load",
            "concurrency": connections * streams,
            "connections": connections,
            "streams_per_connection": streams,
            "error": error,
        }
    print(
        f"  ListProjects {level}, n={run['requests']}: "
        f"{run['rpc_per_s']} RPC/s, p50 {run['p50_ms']} ms, "
        f"p99 {run['p99_ms']} ms, errors {run['errors']}, cpu {run['cpu_cores_used']}",
        flush=True,
    )
    if "error" in run:
        print(f"  ListProjects {level}: FAILED: {run['error']}", flush=True)
    return run


async def _h2load_version(executable: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        executable, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace").strip()
