"""Fixtures of the tests against the real SLURM cluster of deploy/local (``make cluster``).

The cluster must be up: ``make test`` brings it up first. When it is not, every test here fails
with what is missing (never a skip).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slurm_cluster_env import (
    CHECK,
    CLUSTER,
    CLUSTER_USER,
    POLL_INTERVAL,
    RUNNER_SOURCE,
    WORKER_PYTHON,
)
from slurm_world import CONFIG

from fractal_grpc.settings import RunnerSettings
from fractal_runner.app import RunnerApp
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands
from helpers import ApiClient, admin_of
from world import RunningApi, delete_streams_async, running_api


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    result = subprocess.run([str(CHECK)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(
            f"the local SLURM cluster is not up ({result.stderr.strip()}); "
            "run `make cluster` (or deploy/local/up.sh as root)",
            pytrace=False,
        )


@pytest.fixture
def job_dir(slurm_cluster: None) -> Iterator[Path]:
    """A folder the cluster user owns, readable by the runner (root)."""
    path = Path(tempfile.mkdtemp(prefix="fractal-slurm-test-", dir="/tmp"))
    entry = pwd.getpwnam(CLUSTER_USER)
    os.chown(path, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def calls() -> SchedulerCalls:
    return SchedulerCalls()


@pytest.fixture
def commands(slurm_cluster: None, calls: SchedulerCalls) -> SlurmCommands:
    """SLURM commands as the cluster user (sbatch/scancel through sudo, squeue/sacct direct)."""
    return SlurmCommands(cluster=CLUSTER, user=CLUSTER_USER, calls=calls, sudo_user=CLUSTER_USER)


@pytest.fixture
async def poller(commands: SlurmCommands) -> AsyncIterator[SlurmPoller]:
    poller = SlurmPoller(commands, interval=POLL_INTERVAL)
    yield poller
    await poller.close()


@pytest.fixture(scope="module")
def runner_base() -> Iterator[Path]:
    """The runner's working base dir: root's, readable by the cluster user (0755)."""
    path = Path(tempfile.mkdtemp(prefix="fractal-slurm-runner-", dir="/tmp"))
    path.chmod(0o755)
    (path / "slurm.json").write_text(json.dumps(CONFIG))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def slurm_api(
    service_env: dict[str, str], nats_prefix: str, runner_base: Path
) -> AsyncIterator[RunningApi]:
    prefix = f"{nats_prefix}s"
    try:
        async with running_api(
            service_env,
            nats_prefix=prefix,
            runner_backend="slurm_sudo",
            runner_working_base_dir=runner_base / "jobs",
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@pytest.fixture(scope="module")
async def slurm_runner(
    service_env: dict[str, str], nats_prefix: str, slurm_api: RunningApi, runner_base: Path
) -> AsyncIterator[RunnerApp]:
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(
        nats_prefix=f"{nats_prefix}s",
        runner_backend="slurm_sudo",
        runner_working_base_dir=str(runner_base / "jobs"),
    )
    settings = RunnerSettings(
        **env,
        runner_address="127.0.0.1:0",
        api_url=slurm_api.internal_address,
        grace_seconds=0.5,
        slurm_config_file=runner_base / "slurm.json",
        slurm_poll_interval=0.3,
        slurm_worker_python=WORKER_PYTHON,
        slurm_worker_pythonpath=RUNNER_SOURCE,
        slurm_cluster="fractal",
    )
    app = RunnerApp(settings)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="module")
async def slurm_admin(slurm_api: RunningApi) -> AsyncIterator[ApiClient]:
    async with admin_of(slurm_api) as admin:
        yield admin
