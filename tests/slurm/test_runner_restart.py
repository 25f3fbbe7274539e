"""``kill -9`` of a SLURM runner process (slurm_sudo and slurm_ssh) while its SLURM jobs run, then
a new runner process: the job ends DONE, every image was processed once, and no task call was
submitted twice (SLURM's own accounting of the jobs tagged with the run, and the runner's
records, both count the jobs of the batching heuristics, not more).

Two restarts: at once (the jobs are still in squeue: watched again) and after the jobs ended
(squeue no longer lists them: their end comes from sacct and their outputs are collected).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slurm_cluster_env import CLUSTER_USER, SSH_USER
from slurm_stack import PREFIX_SUFFIX, SshSide, runner_env, started_api
from slurm_world import JOB_TIMEOUT, World, mock, new_world, sacct_tagged, set_user, squeue_tags

from e2e.e2e_stack import start_service, wait_serving
from fractal.v2 import image_pb2, image_service_pb2, job_pb2
from fractal_devstack.embedded import free_port
from helpers import ApiClient, admin_of
from world import RUN_ID, RunningApi, create_database, drop_database

N_IMAGES = 6
#: With the test config (1 cpu, 100M per call; max 2 cpus per job; target 2, max 4 jobs) the
#: heuristics give 3 SLURM jobs of 2 calls running side by side.
EXPECTED_JOBS = 3
SLEEP_SECONDS = 6.0


@pytest.fixture(scope="module", params=["slurm_sudo", "slurm_ssh"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def ssh(backend: str, request: pytest.FixtureRequest) -> SshSide | None:
    """The login node of a slurm_ssh runner (None on slurm_sudo)."""
    return request.getfixturevalue("ssh_side") if backend == "slurm_ssh" else None


@pytest.fixture(scope="module")
def own_database(backend: str) -> Iterator[str]:
    """A database of this module and backend only: no other runner of the session sweeps its
    runs."""
    name = f"fractal_slurm_restart_{RUN_ID}_{PREFIX_SUFFIX[backend]}"
    url = create_database(name)
    yield url
    drop_database(name)


@pytest.fixture(scope="module")
def restart_env(
    service_env: dict[str, str], nats_prefix: str, own_database: str, backend: str
) -> dict[str, str]:
    return {
        **service_env,
        "FRACTAL_DATABASE_URL": own_database,
        "FRACTAL_NATS_PREFIX": f"{nats_prefix}r{PREFIX_SUFFIX[backend]}",
    }


@pytest.fixture(scope="module")
async def restart_api(
    restart_env: dict[str, str], runner_base: Path, backend: str, ssh: SshSide | None
) -> AsyncIterator[RunningApi]:
    prefix = restart_env["FRACTAL_NATS_PREFIX"]
    async with started_api(restart_env, prefix, backend, runner_base, ssh) as running:
        yield running


@pytest.fixture(scope="module")
async def restart_admin(restart_api: RunningApi) -> AsyncIterator[ApiClient]:
    async with admin_of(restart_api) as admin:
        yield admin


class RunnerProcess:
    """``fractal-runner serve`` with a SLURM backend, as a process of its own."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it and wait (in a thread: api answers from this event loop) until healthy."""
        self.proc = start_service("runner", self.env, self.logs)
        await asyncio.to_thread(
            wait_serving, "runner", self.env["FRACTAL_RUNNER_ADDRESS"], self.proc, self.logs
        )

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.logs / "runner.log").read_text(errors="replace")


@pytest.fixture
async def runner_process(
    restart_env: dict[str, str],
    restart_api: RunningApi,
    runner_base: Path,
    tmp_path: Path,
    backend: str,
    ssh: SshSide | None,
) -> AsyncIterator[RunnerProcess]:
    env = {
        **os.environ,
        **restart_env,
        **runner_env(backend, runner_base, restart_api.internal_address, ssh),
        "FRACTAL_RUNNER_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    runner = RunnerProcess(env, logs)
    await runner.start()
    yield runner
    await asyncio.to_thread(runner.stop)


@pytest.fixture
async def world(
    restart_admin: ApiClient, job_dir: Path, backend: str, request: pytest.FixtureRequest
) -> World:
    """On slurm_sudo a user running as the cluster user; on slurm_ssh any user (the one SSH
    service user runs every job), its zarr_dir the SSH user's."""
    user = await restart_admin.new_user(verified=True)
    if backend == "slurm_sudo":
        cache = job_dir / "cache"
        await set_user(restart_admin, user, slurm_user=CLUSTER_USER, cache_dir=str(cache))
        subprocess.run(["sudo", "-u", CLUSTER_USER, "mkdir", "-p", str(cache)], check=True)
        zarr_dir = job_dir / "zarr"
    else:
        zarr_dir = request.getfixturevalue("ssh_dirs")["data"] / f"zarr{time.monotonic_ns()}"
    w = await new_world(user, str(zarr_dir))
    await user.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=w.project_id,
            dataset_id=w.dataset_id,
            images=[image_pb2.Image(zarr_url=f"{w.zarr_dir}/plate/{i}") for i in range(N_IMAGES)],
        ),
        metadata=user.md,
    )
    return w


def _slurm_user(backend: str) -> str:
    return SSH_USER if backend == "slurm_ssh" else CLUSTER_USER


def _states(tag: str, user: str) -> list[str]:
    listed = squeue_tags(user)
    return [m.group(1) for m in re.finditer(f"\\|{re.escape(tag)}[^|]*\\|(\\w+)", listed)]


async def _until(what: str, check: object, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("restart", ["at_once", "after_the_jobs_ended"])
async def test_runner_killed_while_slurm_jobs_run(
    world: World, runner_process: RunnerProcess, restart: str, backend: str
) -> None:
    user = _slurm_user(backend)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    task = await world.task(
        "sleepy", command_parallel=mock("generic_task_parallel.py"), output_types={"seen": True}
    )
    await world.add(task, args_parallel={"sleep_seconds": SLEEP_SECONDS})
    job = await world.submit()
    tag = f"fractal:{runner_process.env['FRACTAL_NATS_PREFIX']}:job{job.id}:"

    await _until(
        "every SLURM job of the run runs",
        lambda: _states(tag, user) == ["RUNNING"] * EXPECTED_JOBS,
    )
    runner_process.kill()
    if restart == "after_the_jobs_ended":
        await _until("SLURM no longer lists the jobs", lambda: _states(tag, user) == [])
    else:
        assert _states(tag, user) == ["RUNNING"] * EXPECTED_JOBS
    await runner_process.start()

    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log + runner_process.log()[-3000:]
    images = await world.images()
    assert len(images) == N_IMAGES
    assert all(image["types"] == {"seen": True} for image in images.values())
    for zarr_url in images:  # each call ran once
        runs = [json.loads(line) for line in Path(zarr_url, "data").read_text().splitlines()]
        assert [r["task"] for r in runs] == ["generic_task_parallel"], zarr_url
    # No task call was submitted twice: SLURM knows exactly the heuristics' jobs for this run.
    await _until(
        "sacct lists the run's jobs",
        lambda: len(sacct_tagged(tag, since)) >= EXPECTED_JOBS,
        timeout=30,
    )
    assert len(sacct_tagged(tag, since)) == EXPECTED_JOBS
    assert "found again: watched, not submitted again" in runner_process.log()
