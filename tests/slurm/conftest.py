"""Fixtures of the tests against the real SLURM cluster of deploy/local (``make cluster``).

The cluster must be up: ``make test`` brings it up first. When it is not, every test here fails
with what is missing (never a skip).
"""

from __future__ import annotations

import json
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
    SSH_USER,
    SSHD_DIR,
    SSHD_PORT,
    owned_folder,
)
from slurm_stack import PREFIX_SUFFIX, Deployment, SshSide, deployment
from slurm_world import CONFIG

from fault.tcp_proxy import TcpProxy
from fractal_runner.app import RunnerApp
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands
from helpers import ApiClient


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
    path = owned_folder(CLUSTER_USER, "fractal-slurm-test-")
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
def proxy(slurm_cluster: None) -> Iterator[TcpProxy]:
    """A TCP forwarder to the login node's sshd that a test can cut (every connection dropped,
    new ones refused): what the runner sees when the sshd goes away and comes back. The sshd of
    deploy/local itself is shared with other tests and left alone."""
    forwarder = TcpProxy("127.0.0.1", SSHD_PORT)
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture(scope="module")
def ssh_dirs(proxy: TcpProxy) -> Iterator[dict[str, Path]]:
    """The remote base of the job folders and the zarr dirs (the SSH user's), and a known_hosts
    with the login node's host key at the forwarder's address."""
    remote = owned_folder(SSH_USER, "fractal-ssh-jobs-")
    data = owned_folder(SSH_USER, "fractal-ssh-zarr-")
    local = Path(tempfile.mkdtemp(prefix="fractal-ssh-local-"))
    host_key = (SSHD_DIR / "host_ed25519_key.pub").read_text().split()[:2]
    (local / "known_hosts").write_text(f"[127.0.0.1]:{proxy.port} {' '.join(host_key)}\n")
    yield {"remote": remote, "data": data, "local": local}
    for path in (remote, data, local):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ssh_side(proxy: TcpProxy, ssh_dirs: dict[str, Path]) -> SshSide:
    return SshSide(proxy.port, ssh_dirs["local"] / "known_hosts", ssh_dirs["remote"])


def _prefix(nats_prefix: str, backend: str) -> str:
    return f"{nats_prefix}{PREFIX_SUFFIX[backend]}"


@pytest.fixture(scope="module")
async def sudo_deployment(
    service_env: dict[str, str], nats_prefix: str, runner_base: Path
) -> AsyncIterator[Deployment]:
    prefix = _prefix(nats_prefix, "slurm_sudo")
    async with deployment(service_env, prefix, "slurm_sudo", runner_base) as running:
        yield running


@pytest.fixture(scope="module")
async def ssh_deployment(
    service_env: dict[str, str], nats_prefix: str, runner_base: Path, ssh_side: SshSide
) -> AsyncIterator[Deployment]:
    prefix = _prefix(nats_prefix, "slurm_ssh")
    async with deployment(service_env, prefix, "slurm_ssh", runner_base, ssh_side) as running:
        yield running


@pytest.fixture(scope="module")
def slurm_runner(sudo_deployment: Deployment) -> RunnerApp:
    return sudo_deployment.runner


@pytest.fixture(scope="module")
def slurm_admin(sudo_deployment: Deployment) -> ApiClient:
    return sudo_deployment.admin


@pytest.fixture(scope="module")
def ssh_runner(ssh_deployment: Deployment) -> RunnerApp:
    return ssh_deployment.runner


@pytest.fixture(scope="module")
def ssh_admin(ssh_deployment: Deployment) -> ApiClient:
    return ssh_deployment.admin
