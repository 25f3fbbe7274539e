"""Collections over SSH (FRACTAL_RUNNER_BACKEND=slurm_ssh) against the real sshd of deploy/local
as its service user: the environment made on the login node (with uv when it is there, else
venv and pip), the manifest read back, the tasks' commands naming the remote paths; a failure
removes the remote folder; a collected task runs on the cluster through the slurm_ssh runner;
deactivation removes the remote environment and reactivation rebuilds it.

The cluster and the sshd must be up (``make cluster``); when they are not, these tests fail
saying so (never a skip)."""

from __future__ import annotations

import asyncio
import json
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from collections_api import (
    activity_ends_ok,
    collect,
    collected,
    images_of,
    one_image_workflow,
    run_job,
    tasks_with_source,
    watch,
    with_log,
)
from collector_world import collector_env
from test_collector_restart import Collectors
from wheels import build_fixtures

from fractal.v2 import job_pb2
from fractal.v2 import task_collection_pb2 as cpb
from fractal.v2 import task_collection_service_pb2 as pb
from helpers import ApiClient, admin_of
from world import RunningApi, delete_streams_async, running_api

sys.path.insert(0, str(Path(__file__).parents[1] / "slurm"))

from slurm_cluster_env import (  # noqa: E402
    CHECK,
    RUNNER_SOURCE,
    SSH_USER,
    SSHD_DIR,
    SSHD_PORT,
    WORKER_PYTHON,
    owned_folder,
)
from slurm_world import CONFIG, JOB_TIMEOUT  # noqa: E402

#: The login node's Python (the FRACTAL_TASKS_PYTHON_* paths are the remote host's).
REMOTE_PYTHON = "/usr/bin/python3"
PY = "3.11"
#: A uv the service user can run (the one of this checkout): the "uv" case. The host has no
#: uv on its PATH: the "fallback" case (uv configured, not there) makes venv+pip environments.
UV = str(Path(sys.executable).parent / "uv")


@dataclass
class SshWorld:
    case: str  # "uv" or "fallback"
    tasks_dir: Path
    wheels: dict[str, Path]
    api: RunningApi
    #: The collector's metrics registry.
    registry: Any


@pytest.fixture(scope="module")
def ssh_dirs() -> Iterator[dict[str, Path]]:
    """The remote folders (the SSH user's), a local one with known_hosts and the SLURM
    config, and a folder of wheels the SSH user can read (the remote find-links)."""
    result = subprocess.run([str(CHECK)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(
            f"the local SLURM cluster or sshd is not up ({result.stderr.strip()}); "
            "run `make cluster`",
            pytrace=False,
        )
    dirs = {
        "tasks": owned_folder(SSH_USER, "fractal-ssh-tasks-"),
        "jobs": owned_folder(SSH_USER, "fractal-ssh-cjobs-"),
        "data": owned_folder(SSH_USER, "fractal-ssh-cdata-"),
        "local": Path(tempfile.mkdtemp(prefix="fractal-ssh-clocal-")),
        "wheels": Path(tempfile.mkdtemp(prefix="fractal-ssh-wheels-")),
    }
    dirs["wheels"].chmod(0o755)
    host_key = (SSHD_DIR / "host_ed25519_key.pub").read_text().split()[:2]
    (dirs["local"] / "known_hosts").write_text(f"[127.0.0.1]:{SSHD_PORT} {' '.join(host_key)}\n")
    (dirs["local"] / "slurm.json").write_text(json.dumps(CONFIG))
    yield dirs
    for path in dirs.values():
        shutil.rmtree(path, ignore_errors=True)


def _ssh_settings(dirs: dict[str, Path]) -> dict[str, Any]:
    return {
        "runner_backend": "slurm_ssh",
        "slurm_ssh_host": "127.0.0.1",
        "slurm_ssh_port": SSHD_PORT,
        "slurm_ssh_user": SSH_USER,
        "slurm_ssh_private_key_path": SSHD_DIR / "id_ed25519",
        "slurm_ssh_known_hosts": dirs["local"] / "known_hosts",
    }


@pytest.fixture(scope="module")
async def ssh_api(
    service_env: dict[str, str], nats_prefix: str, ssh_dirs: dict[str, Path]
) -> AsyncIterator[RunningApi]:
    prefix = f"{nats_prefix}k"
    try:
        async with running_api(
            service_env,
            nats_prefix=prefix,
            runner_backend="slurm_ssh",
            runner_working_base_dir=ssh_dirs["local"] / "jobs",
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@pytest.fixture(scope="module")
async def ssh_runner(
    service_env: dict[str, str],
    nats_prefix: str,
    ssh_api: RunningApi,
    ssh_dirs: dict[str, Path],
) -> AsyncIterator[None]:
    from fractal_grpc.settings import RunnerSettings
    from fractal_runner.app import RunnerApp

    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(
        nats_prefix=f"{nats_prefix}k", runner_working_base_dir=str(ssh_dirs["local"] / "jobs")
    )
    app = RunnerApp(
        RunnerSettings(
            **env,
            **_ssh_settings(ssh_dirs),
            runner_address="127.0.0.1:0",
            api_url=ssh_api.internal_address,
            grace_seconds=0.5,
            slurm_config_file=ssh_dirs["local"] / "slurm.json",
            slurm_poll_interval=0.3,
            slurm_worker_python=WORKER_PYTHON,
            slurm_worker_pythonpath=RUNNER_SOURCE,
            slurm_cluster="fractal",
            slurm_ssh_working_base_dir=ssh_dirs["jobs"],
        )
    )
    await app.start()
    try:
        yield
    finally:
        await app.stop()


@pytest.fixture(scope="module", params=["uv", "fallback"])
async def ssh_collector(
    request: pytest.FixtureRequest,
    service_env: dict[str, str],
    nats_prefix: str,
    ssh_api: RunningApi,
    ssh_dirs: dict[str, Path],
) -> AsyncIterator[SshWorld]:
    from fractal_collector.app import CollectorApp
    from fractal_grpc.settings import CollectorSettings

    case = str(request.param)
    tasks_dir = ssh_dirs["tasks"] / case
    wheels = build_fixtures(ssh_dirs["wheels"], f"ssh{case}")
    for wheel in wheels.values():
        wheel.chmod(0o644)
    env = collector_env(service_env, ssh_dirs["local"] / "unused", ssh_dirs["wheels"], "uv")
    kwargs: dict[str, Any] = {k.removeprefix("FRACTAL_").lower(): v for k, v in env.items()}
    kwargs.update(
        _ssh_settings(ssh_dirs),
        nats_prefix=f"{nats_prefix}k",
        api_url=ssh_api.internal_address,
        slurm_ssh_tasks_dir=tasks_dir,
        tasks_python_default_version=PY,
        tasks_python_3_11=REMOTE_PYTHON,
        # uv: one the SSH user can run; fallback: looked for on the host's PATH, not found.
        collector_ssh_uv=UV if case == "uv" else "uv",
        collector_lease_seconds=10,
    )
    app = CollectorApp(CollectorSettings(**kwargs))
    await app.start()
    try:
        yield SshWorld(case, tasks_dir, wheels, ssh_api, app.obs.metrics.registry)
    finally:
        await app.stop()


@pytest.fixture
async def ssh_admin(ssh_api: RunningApi) -> AsyncIterator[ApiClient]:
    async with admin_of(ssh_api) as admin:
        yield admin


def _ssh_uid() -> int:
    return pwd.getpwnam(SSH_USER).pw_uid


async def test_a_package_collected_on_the_login_node(
    ssh_collector: SshWorld, ssh_admin: ApiClient
) -> None:
    user = await ssh_admin.new_user(verified=True)
    name = f"fractal-tasks-good-ssh{ssh_collector.case}"
    final, _ = await collected(user, name)
    assert final.state == cpb.COLLECTION_STATE_OK, final.log
    assert final.package_version == "0.2.0"  # resolved on the host, from its find-links
    env = ssh_collector.tasks_dir / ".fractal" / f"{name}0.2.0"
    assert final.env_dir == str(env)
    python = env / "venv" / "bin" / "python"
    # Made on the host as the SSH user, not by the collector (root) itself.
    assert env.stat().st_uid == _ssh_uid() and python.exists()
    assert (env / "venv").stat().st_uid == _ssh_uid()
    assert f"{name}==0.2.0" in final.freeze
    assert f"{SSH_USER}@127.0.0.1" in final.log
    if ssh_collector.case == "uv":
        assert f"{UV} venv" in final.log and "venv and pip" not in final.log
    else:
        assert "venv and pip" in final.log and f"{REMOTE_PYTHON} -m venv" in final.log
    # The installer-time metric names the installer that ran on the host.
    ran = "uv" if ssh_collector.case == "uv" else "pip"
    count = ssh_collector.registry.get_sample_value(
        "fractal_collector_installer_seconds_count", {"installer": ran}
    )
    assert count is not None and count >= 3
    source = f"pip_remote:{name.replace('-', '_')}:0.2.0::py{PY}"
    tasks = {t.name: t for t in await tasks_with_source(user, source + ":")}
    assert sorted(tasks) == ["Compound Step", "Create Things", "Treat Image"]
    interpreter, script = shlex.split(tasks["Compound Step"].command_parallel)
    assert interpreter == str(python)
    assert Path(script).is_file() and Path(script).is_relative_to(env)
    assert tasks["Create Things"].args_schema_non_parallel["title"] == "Args"


async def test_a_failure_removes_the_remote_folder(
    ssh_collector: SshWorld, ssh_admin: ApiClient
) -> None:
    user = await ssh_admin.new_user(verified=True)
    wheel = ssh_collector.wheels["missing_exe"]  # a path on the collector's machine: uploaded
    final, _ = await collected(user, str(wheel))
    assert final.state == cpb.COLLECTION_STATE_FAILED
    assert "executable step_init.py is missing" in final.error, final.log
    assert "Uploaded wheel:" in final.log and "Removed" in final.log
    assert final.env_dir.startswith(str(ssh_collector.tasks_dir / ".fractal") + "/")
    assert not Path(final.env_dir).exists()
    assert list(final.task_ids) == []
    assert await tasks_with_source(user, final.source) == []


@pytest.mark.parametrize("ssh_collector", ["uv"], indirect=True)
async def test_a_task_collected_over_ssh_runs_on_the_cluster_and_its_lifecycle(
    ssh_collector: SshWorld,
    ssh_admin: ApiClient,
    ssh_runner: None,
    ssh_dirs: dict[str, Path],
) -> None:
    user = await ssh_admin.new_user(verified=True)
    final, _ = await collected(user, str(ssh_collector.wheels["run"]))
    assert final.state == cpb.COLLECTION_STATE_OK, final.log
    env = Path(final.env_dir)
    tasks = {t.name: t for t in await tasks_with_source(user, final.source + ":")}
    assert shlex.split(tasks["Treat Image"].command_parallel)[0] == str(
        env / "venv" / "bin" / "python"
    )

    submit = await one_image_workflow(
        user,
        str(ssh_dirs["data"] / "zarr"),
        [tasks["Create Things"].id, tasks["Treat Image"].id],
    )
    job = await run_job(user, submit, JOB_TIMEOUT)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    (image,) = await images_of(user, submit)
    assert {"treat": True, "treated": True}.items() <= dict(image.types).items()

    # Deactivated: the remote environment goes, the record keeps the frozen versions.
    deactivation = await ssh_admin.collections.DeactivateCollection(
        pb.DeactivateCollectionRequest(collection_id=final.id), metadata=ssh_admin.md
    )
    await activity_ends_ok(ssh_admin, deactivation.activity)
    assert not env.exists()
    # Reactivated: rebuilt on the host from the frozen versions (the wheel uploaded again).
    reactivation = await ssh_admin.collections.ReactivateCollection(
        pb.ReactivateCollectionRequest(collection_id=final.id), metadata=ssh_admin.md
    )
    await activity_ends_ok(ssh_admin, reactivation.activity)
    assert (env / "venv" / "bin" / "python").exists() and env.stat().st_uid == _ssh_uid()
    job = await run_job(user, submit, JOB_TIMEOUT)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log


async def test_the_remote_host_keeps_to_its_folders_and_stops_leftovers(
    ssh_dirs: dict[str, Path],
) -> None:
    """The host's folder and process rules against the real sshd: made and removed only inside
    the tasks folder and only when marked as the collection's; a second attempt kills what a
    dead collector left running in that environment, and nothing else."""
    from fractal_collector.environment import FolderExists
    from fractal_collector.hosts import HostFileError, SshHost
    from fractal_grpc.collection import remote
    from fractal_grpc.ssh import SshConnection, SshTarget

    connection = SshConnection(
        SshTarget(
            host="127.0.0.1",
            user=SSH_USER,
            port=SSHD_PORT,
            key_file=SSHD_DIR / "id_ed25519",
            known_hosts=ssh_dirs["local"] / "known_hosts",
        )
    )
    root = ssh_dirs["tasks"] / "rules"
    host = SshHost(connection, tasks_dir=str(root), command_seconds=60)
    folder, neighbour = f"{root}/.fractal/pkg1.0", f"{root}/.fractal/pkg1.01"
    try:
        with pytest.raises(HostFileError):
            await host.create_folder(str(ssh_dirs["tasks"] / "outside"), 7)
        assert not (ssh_dirs["tasks"] / "outside").exists()
        await host.create_folder(folder, 7)
        await host.create_folder(neighbour, 8)
        assert Path(folder).stat().st_uid == _ssh_uid()
        with pytest.raises(FolderExists):
            await host.create_folder(folder, 9)  # another collection's
        assert not await host.remove_folder(folder, 9) and Path(folder).exists()
        assert not await host.remove_folder(str(root), 7) and root.exists()

        # Stand-ins for installers of a dead collector, one per environment.
        start = (
            'nohup /usr/bin/python3 -c "import time; time.sleep(300)" "$1" '
            "</dev/null >/dev/null 2>&1 & echo $!"
        )
        pids = {}
        for path in (folder, neighbour):
            _, out, _ = await connection.exec(remote.sh(start, f"{path}/venv/bin/python"))
            pids[path] = int(out.decode().strip())

        async def alive(pid: int) -> bool:
            status, _, _ = await connection.exec(f"kill -0 {pid}")
            return status == 0

        assert await alive(pids[folder]) and await alive(pids[neighbour])
        await host.stop_leftovers(folder)
        for _ in range(50):
            if not await alive(pids[folder]):
                break
            await asyncio.sleep(0.1)
        assert not await alive(pids[folder])
        assert await alive(pids[neighbour])  # pkg1.01 is not pkg1.0
        await connection.exec(f"kill -KILL {pids[neighbour]}")

        assert await host.remove_folder(folder, 7) and not Path(folder).exists()
        assert await host.remove_folder(neighbour, 8) and not Path(neighbour).exists()
    finally:
        await connection.close()


SLOW_FIRST_TIME = """#!/bin/sh
# The first run sleeps in a process that names the environment (the collector is killed
# meanwhile); every later run is the real Python.
if [ ! -e "{marker}" ]; then
  touch "{marker}"
  {python} -c "import time; time.sleep(300)" "$@"
fi
exec {python} "$@"
"""


async def test_killed_mid_remote_installation_then_completed(
    service_env: dict[str, str], nats_prefix: str, ssh_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Kill the collector while its installer runs on the host: the next collector kills that
    leftover installer, rebuilds the remote folder and ends the collection OK."""
    slow = ssh_dirs["data"] / "slow-python"
    marker = ssh_dirs["data"] / "slowed"
    slow.write_text(SLOW_FIRST_TIME.format(marker=marker, python=REMOTE_PYTHON))
    slow.chmod(0o755)
    wheel = build_fixtures(ssh_dirs["wheels"], "sshkill")["race"]
    wheel.chmod(0o644)
    tasks_dir = ssh_dirs["tasks"] / "kill"
    prefix = f"{nats_prefix}q"
    ssh = {f"FRACTAL_{k.upper()}": str(v) for k, v in _ssh_settings(ssh_dirs).items()}
    try:
        async with running_api(service_env, nats_prefix=prefix, runner_backend="slurm_ssh") as api:
            env = collector_env(
                service_env,
                ssh_dirs["local"] / "unused",
                ssh_dirs["wheels"],
                "pip",
                **ssh,
                FRACTAL_NATS_PREFIX=prefix,
                FRACTAL_API_URL=api.internal_address,
                FRACTAL_COLLECTOR_LEASE_SECONDS="2",
                FRACTAL_SLURM_SSH_TASKS_DIR=str(tasks_dir),
                FRACTAL_TASKS_PYTHON_DEFAULT_VERSION=PY,
                FRACTAL_TASKS_PYTHON_3_11=str(slow),
            )
            group = Collectors(env, tmp_path)
            try:
                async with admin_of(api) as admin:
                    user = await admin.new_user(verified=True)
                    await _kill_and_complete(user, group, wheel, tasks_dir)
            finally:
                group.close()
    finally:
        await delete_streams_async(prefix)


def _sleepers(folder: str) -> list[int]:
    """The SSH user's processes whose command line names ``folder``'s environment."""
    found = subprocess.run(
        ["pgrep", "-u", SSH_USER, "-f", "--", f"{folder}/venv"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


async def _kill_and_complete(
    user: ApiClient, group: Collectors, wheel: Path, tasks_dir: Path
) -> None:
    first = group.start()
    made = await collect(user, str(wheel))

    async def get() -> cpb.TaskCollection:
        return await with_log(user, made.id)

    deadline = asyncio.get_running_loop().time() + 90
    while True:
        row = await get()
        if row.HasField("env_dir") and _sleepers(row.env_dir):
            break
        assert asyncio.get_running_loop().time() < deadline, row.log
        await asyncio.sleep(0.3)
    folder = row.env_dir
    left = _sleepers(folder)
    first.send_signal(signal.SIGKILL)
    first.wait()
    await asyncio.sleep(1.0)
    assert _sleepers(folder) == left  # the remote installer outlives its collector

    group.start()
    messages = await watch(user, made.id, timeout=180)
    final = await get()
    assert messages[-1].collection.state == cpb.COLLECTION_STATE_OK, final.log
    assert "Attempt 2" in final.log
    assert _sleepers(folder) == []  # killed by the second attempt, not left to finish
    assert final.env_dir == folder
    assert sorted(p.name for p in (tasks_dir / ".fractal").iterdir()) == [Path(folder).name]
    assert (Path(folder) / "venv" / "bin" / "python").exists()
    assert len(await tasks_with_source(user, final.source + ":")) == 3
