"""One builder of the api and runner of the runner tests on the real cluster, for both backends.

``runner_env`` is the one place that says how a SLURM runner of these tests is configured (as the
``FRACTAL_*`` variables of a ``fractal-runner serve`` process); ``started_runner`` runs the same
configuration in this process, and ``started_api`` is the api it reports to; ``deployment``
starts both and logs the admin in. The two backends differ only in the ``SshSide`` given (the
login node's address and the remote job folders).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from slurm_cluster_env import RUNNER_SOURCE, SSH_PRIVATE_KEY, SSH_USER, WORKER_PYTHON

from fractal_grpc.settings import RunnerSettings
from fractal_runner.app import RunnerApp
from helpers import ApiClient, admin_of
from world import RunningApi, delete_streams_async, running_api

#: The NATS prefix suffix of each backend's deployment (one deployment per backend and module).
PREFIX_SUFFIX = {"slurm_sudo": "s", "slurm_ssh": "h"}


@dataclass(frozen=True)
class SshSide:
    """Where a slurm_ssh runner finds the login node, and its job folders there."""

    port: int
    known_hosts: Path
    remote_base: Path


def runner_env(
    backend: str,
    runner_base: Path,
    api_url: str,
    ssh: SshSide | None = None,
    **extra: str,
) -> dict[str, str]:
    """The ``FRACTAL_*`` variables of a runner of ``backend`` on the local cluster."""
    env = {
        "FRACTAL_RUNNER_BACKEND": backend,
        "FRACTAL_RUNNER_WORKING_BASE_DIR": str(runner_base / "jobs"),
        "FRACTAL_API_URL": api_url,
        "FRACTAL_GRACE_SECONDS": "0.5",
        "FRACTAL_SLURM_CONFIG_FILE": str(runner_base / "slurm.json"),
        "FRACTAL_SLURM_POLL_INTERVAL": "0.3",
        "FRACTAL_SLURM_WORKER_PYTHON": WORKER_PYTHON,
        "FRACTAL_SLURM_WORKER_PYTHONPATH": RUNNER_SOURCE,
        "FRACTAL_SLURM_CLUSTER": "fractal",
    }
    if backend == "slurm_ssh":
        assert ssh is not None, "a slurm_ssh runner needs the login node (SshSide)"
        env.update(
            {
                "FRACTAL_SLURM_SSH_HOST": "127.0.0.1",
                "FRACTAL_SLURM_SSH_PORT": str(ssh.port),
                "FRACTAL_SLURM_SSH_USER": SSH_USER,
                "FRACTAL_SLURM_SSH_PRIVATE_KEY_PATH": str(SSH_PRIVATE_KEY),
                "FRACTAL_SLURM_SSH_KNOWN_HOSTS": str(ssh.known_hosts),
                "FRACTAL_SLURM_SSH_WORKING_BASE_DIR": str(ssh.remote_base),
            }
        )
    env.update(extra)
    return env


def settings_of(env: dict[str, str]) -> dict[str, str]:
    """``FRACTAL_*`` variables as settings keyword arguments."""
    return {k.removeprefix("FRACTAL_").lower(): v for k, v in env.items()}


@asynccontextmanager
async def started_api(
    service_env: dict[str, str],
    prefix: str,
    backend: str,
    runner_base: Path,
    ssh: SshSide | None = None,
) -> AsyncIterator[RunningApi]:
    """An api of a ``backend`` deployment on NATS prefix ``prefix`` (its streams deleted after)."""
    remote = {} if ssh is None else {"slurm_ssh_working_base_dir": ssh.remote_base}
    try:
        async with running_api(
            service_env,
            nats_prefix=prefix,
            runner_backend=backend,
            runner_working_base_dir=runner_base / "jobs",
            **remote,
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@asynccontextmanager
async def started_runner(
    service_env: dict[str, str],
    prefix: str,
    backend: str,
    api: RunningApi,
    runner_base: Path,
    ssh: SshSide | None = None,
) -> AsyncIterator[RunnerApp]:
    """A runner of ``backend`` in this process, reporting to ``api``."""
    env = {**service_env, "FRACTAL_NATS_PREFIX": prefix}
    env.update(runner_env(backend, runner_base, api.internal_address, ssh))
    app = RunnerApp(RunnerSettings(**settings_of(env), runner_address="127.0.0.1:0"))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@dataclass(frozen=True)
class Deployment:
    """An api and a runner of one backend, and the admin's client."""

    api: RunningApi
    runner: RunnerApp
    admin: ApiClient


@asynccontextmanager
async def deployment(
    service_env: dict[str, str],
    prefix: str,
    backend: str,
    runner_base: Path,
    ssh: SshSide | None = None,
) -> AsyncIterator[Deployment]:
    async with (
        started_api(service_env, prefix, backend, runner_base, ssh) as api,
        started_runner(service_env, prefix, backend, api, runner_base, ssh) as runner,
        admin_of(api) as admin,
    ):
        yield Deployment(api, runner, admin)
