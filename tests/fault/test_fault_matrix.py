"""Fault injection: kill a component of the stack while jobs run, check that nothing is lost,
duplicated or run twice.

Each scenario runs ``JOBS`` concurrent jobs (conftest), stops them at the fault point (every
job has task ``a`` applied and task ``b`` half done, its last calls in flight; see
fault_jobs.py), injects the fault, lets the jobs finish, and checks:

- every job DONE (figures: DONE / FAILED / stuck);
- no duplicate history entry;
- every image carries each task's output exactly once, and no image is added or lost;
- facets exact: QueryImages' total_count for every facet value equals the images of the list;
- no call that had completed before the fault ran again;
- every call in flight at the fault ran at most once more.

The figures of every scenario are printed at the end of the run ("fault matrix").
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_stack import Stack, kill, start
from fault_checks import FIGURES, Figures
from fault_jobs import IMAGES, JOBS, SLURM_JOBS, FaultJobs
from slurm_cluster_env import CLUSTER_USER, WORKER_PYTHON
from slurm_world import set_user

from fractal_grpc.client import open_channel
from helpers import ApiClient
from waiting import is_gone

#: How long a killed component stays down.
DOWNTIME_SECONDS = 3.0
#: Bound on the wait for something that takes seconds (a loaded 2-core machine).
SLOW_SECONDS = 120.0


@dataclass
class Faulted:
    """What a fault acts on."""

    stack: Stack
    servers: Any  # conftest.Servers
    jobs: FaultJobs
    fault_time: float


Fault = Callable[[Faulted], Awaitable[None]]


async def _wait(condition: Callable[[], bool], what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + SLOW_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} (after {SLOW_SECONDS:.0f}s)"
        await asyncio.sleep(poll)


def runner_stopped_by(sig: int) -> Fault:
    """The runner gets ``sig``; a new one starts after the downtime. The gate opens once the
    task processes of the calls in flight are gone (so every re-run is a re-run by the new
    runner, never the old process finishing)."""

    async def fault(f: Faulted) -> None:
        flying = f.jobs.in_flight_pids(f.fault_time)
        await asyncio.to_thread(kill, f.stack, "runner", sig)
        await asyncio.sleep(DOWNTIME_SECONDS)
        await asyncio.to_thread(start, f.stack, "runner")
        await _wait(
            lambda: all(is_gone(pid) for pid in flying.values()),
            "the task processes of the stopped runner are still running",
        )
        f.jobs.open_gate()

    return fault


def down_for_a_while(stop: Callable[[Faulted], None], restart: Callable[[Faulted], None]) -> Fault:
    """The component dies; the calls in flight complete and report while it is down; it is
    started again after the downtime."""

    async def fault(f: Faulted) -> None:
        await asyncio.to_thread(stop, f)
        f.jobs.open_gate()
        await asyncio.sleep(DOWNTIME_SECONDS)
        await asyncio.to_thread(restart, f)

    return fault


def killed_for_a_while(service: str) -> Fault:
    """``kill -9`` of a service (its process group); started again after the downtime."""
    return down_for_a_while(
        lambda f: kill(f.stack, service, signal.SIGKILL), lambda f: start(f.stack, service)
    )


POSTGRES_DOWN = down_for_a_while(
    lambda f: f.servers.kill_postgres(), lambda f: f.servers.start_postgres()
)


async def postgres_blip_during_a_report(f: Faulted) -> None:
    """The services lose PostgreSQL (every connection dropped, new ones refused) just before
    the result reports of task b, and get it back as soon as api has failed one: an outage
    that spans a report and nothing much else."""
    api_log = f.stack.logs / "api.log"
    offset = api_log.stat().st_size
    proxy = f.servers.db_proxy
    await asyncio.to_thread(proxy.cut)
    f.jobs.open_gate()

    def report_failed() -> bool:
        with api_log.open("rb") as handle:
            handle.seek(offset)
            return b"ApplyTaskResult failed" in handle.read()

    try:
        await _wait(report_failed, "api never failed a result report while cut off", 0.01)
    finally:
        await asyncio.to_thread(proxy.restore)


SCENARIOS = [
    pytest.param(
        runner_stopped_by(signal.SIGKILL),
        id="kill-9-runner",
    ),
    pytest.param(
        runner_stopped_by(signal.SIGTERM),
        id="sigterm-runner",
    ),
    pytest.param(killed_for_a_while("api"), id="kill-9-api"),
    pytest.param(
        down_for_a_while(lambda f: f.servers.kill_nats(), lambda f: f.servers.start_nats()),
        id="kill-9-nats",
    ),
    pytest.param(POSTGRES_DOWN, id="kill-9-postgres"),
    pytest.param(
        postgres_blip_during_a_report,
        id="postgres-blip-during-a-report",
    ),
]


#: The scenarios on the slurm_sudo backend that reach SLURM-specific paths: the runner dies
#: while SLURM jobs run and end (its records and the cluster's squeue/sacct bring them back,
#: nothing submitted again), and PostgreSQL dies under the runner's records of its SLURM jobs
#: and under the results of those jobs. The gate opens while the component is down, so the
#: held SLURM jobs end meanwhile.
SLURM_SCENARIOS = [
    pytest.param(killed_for_a_while("runner"), id="kill-9-runner-slurm_sudo"),
    pytest.param(POSTGRES_DOWN, id="kill-9-postgres-slurm_sudo"),
]


@pytest.mark.fault
@pytest.mark.parametrize("fault", SCENARIOS)
async def test_jobs_survive(
    fault: Fault,
    fault_stack: Stack,
    servers: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    async with open_channel(fault_stack.api_address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        jobs = await FaultJobs(admin, tmp_path).build(JOBS, IMAGES)
        await run_scenario(fault, Faulted(fault_stack, servers, jobs, 0.0), request)


@pytest.mark.fault
@pytest.mark.parametrize("fault", SLURM_SCENARIOS)
async def test_jobs_survive_on_slurm_sudo(
    fault: Fault,
    slurm_fault_stack: Stack,
    servers: Any,
    slurm_root: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The same checks with the jobs' calls run as SLURM jobs of the cluster user."""
    user_dir = slurm_root / "user"
    async with open_channel(slurm_fault_stack.api_address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        await set_user(admin, admin, slurm_user=CLUSTER_USER, cache_dir=str(user_dir / "cache"))
        jobs = FaultJobs(admin, user_dir, python=WORKER_PYTHON, meta={})
        await jobs.build(SLURM_JOBS, IMAGES)
        await run_scenario(fault, Faulted(slurm_fault_stack, servers, jobs, 0.0), request)


async def run_scenario(fault: Fault, faulted: Faulted, request: pytest.FixtureRequest) -> None:
    """Submit, reach the fault point, inject the fault, measure and check."""
    jobs = faulted.jobs
    await jobs.submit()
    await jobs.reach_fault_point()
    faulted.fault_time = time.time()
    await fault(faulted)
    figures = await jobs.measure(request.node.callspec.id, faulted.fault_time)
    FIGURES.append(figures)
    check(figures)


def check(f: Figures) -> None:
    """Every check of the matrix; the message names each one that failed, with the figures."""
    failures = [
        failure
        for failure in (
            all_jobs_done(f),
            no_duplicate_history(f),
            every_output_once(f),
            facets_exact(f),
            no_completed_call_rerun(f),
            in_flight_calls_rerun_at_most_once(f),
        )
        if failure
    ]
    notes = "".join(f"\n  {note}" for note in f.notes)
    assert not failures, "; ".join(failures) + f"\n{f.row()}{notes}"


def all_jobs_done(f: Figures) -> str:
    total = f.done + f.failed + f.stuck
    if f.done == total:
        return ""
    return f"jobs not all DONE: {f.done} DONE, {f.failed} FAILED, {f.stuck} stuck of {total}"


def no_duplicate_history(f: Figures) -> str:
    return f"{f.duplicate_history} duplicate history entries" if f.duplicate_history else ""


def every_output_once(f: Figures) -> str:
    return (
        f"{f.image_defects} image defects (outputs missing or doubled)" if f.image_defects else ""
    )


def facets_exact(f: Figures) -> str:
    return (
        f"{f.facet_mismatches} facet counts differ from the image list"
        if f.facet_mismatches
        else ""
    )


def no_completed_call_rerun(f: Figures) -> str:
    return f"{f.completed_reruns} completed calls re-run" if f.completed_reruns else ""


def in_flight_calls_rerun_at_most_once(f: Figures) -> str:
    if f.in_flight_max_reruns <= 1:
        return ""
    return f"an in-flight call was re-run {f.in_flight_max_reruns} times (at most once allowed)"
