"""Fixtures of the tests against the real SLURM cluster of deploy/local (``make cluster``).

The cluster must be up: ``make test`` brings it up first. When it is not, every test here fails
with what is missing (never a skip).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slurm_cluster_env import CHECK, CLUSTER, CLUSTER_USER, POLL_INTERVAL

from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands


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
