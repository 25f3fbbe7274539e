"""Kill the collector during an installation, start another: the command is redelivered, the
new collector claims the collection once the dead one's lease has expired, rebuilds the
environment folder from scratch, and the collection ends OK with its tasks registered once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from collections_api import collect, tasks_with_source, watch, with_log
from collector_world import collector_env
from wheels import good_manifest, task_package

from fractal.v2 import task_collection_pb2 as cpb
from helpers import ApiClient
from world import RunningApi

SLOW_FIRST_TIME = """#!/bin/sh
# The first run waits (the collector is killed meanwhile); every later run is the real Python.
if [ ! -e "{marker}" ]; then touch "{marker}"; sleep 60; fi
exec {python} "$@"
"""


class Collectors:
    """Collector processes of this test, each killed at the end if still alive."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"collector-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fractal_collector", "serve"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def collectors(
    service_env: dict[str, str], api: RunningApi, tmp_path: Path
) -> Iterator[tuple[Collectors, Path, Path]]:
    wheels_dir = tmp_path / "wheels"
    wheel = task_package(wheels_dir, "fractal-tasks-restart", "1.0.0", manifest=good_manifest())
    python = tmp_path / "slow-python"
    python.write_text(SLOW_FIRST_TIME.format(marker=tmp_path / "slowed", python=sys.executable))
    python.chmod(0o755)
    tasks_dir = tmp_path / "tasks"
    env = collector_env(
        service_env,
        tasks_dir,
        wheels_dir,
        "uv",
        FRACTAL_API_URL=api.internal_address,
        FRACTAL_COLLECTOR_LEASE_SECONDS="2",
        FRACTAL_TASKS_PYTHON_DEFAULT_VERSION=f"{sys.version_info.major}.{sys.version_info.minor}",
        **{f"FRACTAL_TASKS_PYTHON_{sys.version_info.major}_{sys.version_info.minor}": str(python)},
    )
    group = Collectors(env, tmp_path)
    try:
        yield group, wheel, tasks_dir
    finally:
        group.close()


async def _until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_killed_mid_installation_then_completed(
    collectors: tuple[Collectors, Path, Path], verified: ApiClient
) -> None:
    group, wheel, tasks_dir = collectors
    first = group.start()
    made = await collect(verified, str(wheel))

    async def get() -> cpb.TaskCollection:
        return await with_log(verified, made.id)

    async def installing_in_its_folder() -> bool:
        row = await get()
        return row.state == cpb.COLLECTION_STATE_INSTALLING and row.HasField("env_dir")

    await _until(installing_in_its_folder)
    folder = Path((await get()).env_dir)
    assert folder.is_dir()
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (await get()).state == cpb.COLLECTION_STATE_INSTALLING  # left behind as it was

    group.start()
    messages = await watch(verified, made.id, timeout=120)
    final = await get()
    assert messages[-1].collection.state == cpb.COLLECTION_STATE_OK, final.log
    assert "Attempt 2" in final.log
    # One environment, complete, marked as this collection's; the tasks registered once.
    assert final.env_dir == str(folder)
    assert sorted(p.name for p in (tasks_dir / ".fractal").iterdir()) == [folder.name]
    assert (folder / "venv" / "bin" / "python").exists()
    assert (folder / ".fractal-collection").read_text().strip() == str(made.id)
    assert len(await tasks_with_source(verified, final.source + ":")) == 3
