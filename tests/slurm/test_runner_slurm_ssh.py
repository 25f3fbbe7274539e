"""The runner with FRACTAL_RUNNER_BACKEND=slurm_ssh against the real cluster, through the sshd of
deploy/local as its service user: the golden scenario (results identical to the local
executor's), and a run that survives its SSH connection being cut off and given back.

The SSH traffic goes through a TCP forwarder the test can cut (every connection dropped, new ones
refused), which is what the runner sees when the login node's sshd goes away and comes back; the
sshd of deploy/local itself is shared with other tests and left alone.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slurm_cluster_env import RUNNER_SOURCE, WORKER_PYTHON
from slurm_world import JOB_TIMEOUT, World, mock, new_world, run_golden_scenario, sacct_tagged

from fault.tcp_proxy import TcpProxy
from fractal.v2 import image_pb2, image_service_pb2, job_pb2
from fractal_grpc.settings import RunnerSettings
from fractal_runner.app import RunnerApp
from fractal_runner.slurm.backend import SlurmSshBackend
from helpers import ApiClient, admin_of
from world import RunningApi, delete_streams_async, running_api

SSHD_DIR = Path(os.environ.get("FRACTAL_SSHD_DIR", "/var/lib/fractal-sshd"))
SSHD_PORT = int(os.environ.get("FRACTAL_SSHD_PORT", "2222"))
SSH_USER = os.environ.get("FRACTAL_SSH_USER", "fractal-ssh")


def _owned_by_ssh_user(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    entry = pwd.getpwnam(SSH_USER)
    os.chown(path, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def proxy(slurm_cluster: None) -> Iterator[TcpProxy]:
    forwarder = TcpProxy("127.0.0.1", SSHD_PORT)
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture(scope="module")
def ssh_dirs(proxy: TcpProxy) -> Iterator[dict[str, Path]]:
    """The remote base of the job folders and the zarr dirs (the SSH user's), and a known_hosts
    with the login node's host key at the forwarder's address."""
    remote = _owned_by_ssh_user("fractal-ssh-jobs-")
    data = _owned_by_ssh_user("fractal-ssh-zarr-")
    local = Path(tempfile.mkdtemp(prefix="fractal-ssh-local-"))
    host_key = (SSHD_DIR / "host_ed25519_key.pub").read_text().split()[:2]
    (local / "known_hosts").write_text(f"[127.0.0.1]:{proxy.port} {' '.join(host_key)}\n")
    yield {"remote": remote, "data": data, "local": local}
    for path in (remote, data, local):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def ssh_api(
    service_env: dict[str, str], nats_prefix: str, runner_base: Path
) -> AsyncIterator[RunningApi]:
    prefix = f"{nats_prefix}h"
    try:
        async with running_api(
            service_env,
            nats_prefix=prefix,
            runner_backend="slurm_ssh",
            runner_working_base_dir=runner_base / "jobs",
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@pytest.fixture(scope="module")
async def ssh_runner(
    service_env: dict[str, str],
    nats_prefix: str,
    ssh_api: RunningApi,
    runner_base: Path,
    proxy: TcpProxy,
    ssh_dirs: dict[str, Path],
) -> AsyncIterator[RunnerApp]:
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(
        nats_prefix=f"{nats_prefix}h",
        runner_backend="slurm_ssh",
        runner_working_base_dir=str(runner_base / "jobs"),
    )
    settings = RunnerSettings(
        **env,
        runner_address="127.0.0.1:0",
        api_url=ssh_api.internal_address,
        grace_seconds=0.5,
        slurm_config_file=runner_base / "slurm.json",
        slurm_poll_interval=0.3,
        slurm_worker_python=WORKER_PYTHON,
        slurm_worker_pythonpath=RUNNER_SOURCE,
        slurm_cluster="fractal",
        slurm_ssh_host="127.0.0.1",
        slurm_ssh_port=proxy.port,
        slurm_ssh_user=SSH_USER,
        slurm_ssh_private_key_path=SSHD_DIR / "id_ed25519",
        slurm_ssh_known_hosts=ssh_dirs["local"] / "known_hosts",
        slurm_ssh_working_base_dir=ssh_dirs["remote"],
    )
    app = RunnerApp(settings)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="module")
async def ssh_admin(ssh_api: RunningApi) -> AsyncIterator[ApiClient]:
    async with admin_of(ssh_api) as admin:
        yield admin


@pytest.fixture
async def world(ssh_admin: ApiClient, ssh_runner: RunnerApp, ssh_dirs: dict[str, Path]) -> World:
    """A user of the slurm_ssh deployment (nothing SLURM-specific: one service user runs all)."""
    user = await ssh_admin.new_user(verified=True)
    return await new_world(user, str(ssh_dirs["data"] / f"zarr{time.monotonic_ns()}"))


def _backend(runner: RunnerApp) -> SlurmSshBackend:
    assert isinstance(runner.slurm, SlurmSshBackend)
    return runner.slurm


async def test_golden_scenario_on_slurm_ssh(world: World, ssh_runner: RunnerApp) -> None:
    backend = _backend(ssh_runner)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    sbatch_before = backend.calls.count("sbatch")
    job = await run_golden_scenario(world, "slurm_ssh")
    # The same 8 SLURM jobs as on slurm_sudo, as the SSH user; the task files came back.
    assert backend.calls.count("sbatch") - sbatch_before == 8
    assert backend.records is not None
    assert await backend.records.count(job.id) == 8
    jobs = sacct_tagged(backend.records.tag_prefix(job.id), since)
    assert jobs and all(line.endswith(f"|{SSH_USER}") for line in jobs)
    local = Path(job.working_dir)
    assert (local / "1_illumination_correction" / "1_par_0000001.done.json").is_file()
    assert (local / "1_illumination_correction" / "1_par_0000001.log").is_file()
    assert backend.connection.generation == 1  # one shared connection, version-checked once


async def test_a_run_survives_its_ssh_connection_cut_off(
    world: World, ssh_runner: RunnerApp, proxy: TcpProxy
) -> None:
    backend = _backend(ssh_runner)
    assert backend.records is not None
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    urls = [f"{world.zarr_dir}/plate/{i}" for i in range(4)]
    await world.client.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=world.project_id,
            dataset_id=world.dataset_id,
            images=[image_pb2.Image(zarr_url=url) for url in urls],
        ),
        metadata=world.client.md,
    )
    task = await world.task(
        "sleepy", command_parallel=mock("generic_task_parallel.py"), output_types={"seen": True}
    )
    await world.add(task, args_parallel={"sleep_seconds": 4})
    job = await world.submit()
    tag = backend.records.tag_prefix(job.id)
    connections = backend.connection.generation

    deadline = time.monotonic() + JOB_TIMEOUT
    while len(re.findall(f"\\|{re.escape(tag)}[^|]*\\|RUNNING", _squeue())) < 2:
        assert time.monotonic() < deadline, (await world.get(job.id)).log
        await asyncio.sleep(0.2)
    proxy.cut()  # the login node is gone: every SSH connection dropped, new ones refused
    await asyncio.sleep(3)
    proxy.restore()

    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    images = await world.images()
    assert all(image["types"] == {"seen": True} for image in images.values())
    for url in urls:  # each call ran once
        runs = [json.loads(line) for line in Path(url, "data").read_text().splitlines()]
        assert [r["task"] for r in runs] == ["generic_task_parallel"], url
    assert backend.connection.generation > connections  # it reconnected
    assert await backend.records.count(job.id) == 2  # 4 calls, 2 per job: nothing resubmitted
    for _ in range(100):
        if len(sacct_tagged(tag, since)) == 2:
            break
        await asyncio.sleep(0.3)
    assert len(sacct_tagged(tag, since)) == 2


def _squeue() -> str:
    import subprocess

    return subprocess.run(
        ["squeue", "-h", "-u", SSH_USER, "--format=%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
