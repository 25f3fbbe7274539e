"""`make run`'s engine, `fractal-dev run`, on embedded PostgreSQL and NATS from their wheels:
it comes up, the printed login works, whatever dies (kill -9) comes back (a dead runner's task
processes killed first), it is ready only once the runner reaches the api, and Ctrl-C stops
everything it started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import psutil
import pytest
from test_e2e import Scenario, command

from fractal.v2 import job_service_pb2
from fractal_devstack.embedded import free_port, port_accepts
from helpers import ApiClient
from waiting import is_gone, wait_until

BIN = Path(sys.executable).parent


class DevRun:
    """``fractal-dev run`` as a process; its output is collected by a thread."""

    def __init__(self, state: Path, api_port: int, *args: str, **env: str) -> None:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FRACTAL_") or k.startswith("FRACTAL_TEST")
        }
        self.proc = subprocess.Popen(
            [str(BIN / "fractal-dev"), "run", "--state-dir", str(state)]
            + ["--api-port", str(api_port), *args],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.seen: set[int] = set()  # every process of the stack seen so far
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or self._reader.is_alive(), self.output
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            await asyncio.sleep(0.1)
        return self.output

    def child(self, executable: str) -> psutil.Process:
        """The one running child process whose command line names ``executable``."""
        found = [
            p
            for p in psutil.Process(self.proc.pid).children(recursive=True)
            if any(Path(part).name == executable for part in p.cmdline()[:2])
        ]
        assert len(found) == 1, found
        self.seen.add(found[0].pid)
        return found[0]

    def stop(self) -> None:
        """Ctrl-C; kill the group if it does not end (the test fails elsewhere then)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(10)


@pytest.fixture
def state() -> Iterator[Path]:
    # Not under pytest's tmp dir: as root, the embedded postgres user must traverse the path.
    path = Path(tempfile.mkdtemp(prefix="fractal-dev-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _login(api: str) -> bool:
    async with grpc.aio.insecure_channel(api) as channel:
        client = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        return bool(client.token)


def _login_with_grpcurl(command_line: str) -> str:
    args = re.match(r"grpcurl -plaintext -d '(.+)' (\S+) (\S+)$", command_line)
    assert args is not None, command_line
    body, address, method = args.groups()
    reply = subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", "-d", body, address, method],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reply.returncode == 0, reply.stderr
    return reply.stdout


async def test_fractal_dev_run_restarts_what_dies_and_stops_everything(
    state: Path, tmp_path: Path
) -> None:
    api_port = free_port()
    api = f"127.0.0.1:{api_port}"
    run = DevRun(state, api_port)
    try:
        banner = await run.wait_for("Press Ctrl-C to stop")
        assert "ready once it has reached the api at" in banner
        login = re.search(r"Login\s+(grpcurl .+)$", banner, re.MULTILINE)
        assert login is not None, banner
        reply = await asyncio.to_thread(_login_with_grpcurl, login.group(1))
        assert "access_token" in reply or "accessToken" in reply
        database = re.search(r"Database\s+\S+@127\.0\.0\.1:(\d+)/", banner)
        assert database is not None, banner
        pg_port = int(database.group(1))

        # A job whose task process (and its child) runs for long.
        pid_file = tmp_path / "pids.json"
        async with grpc.aio.insecure_channel(api) as channel:
            admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
            s = await Scenario(await admin.new_user(), str(tmp_path / "zarr")).setup()
            await s.add_task(
                "spawn",
                command_non_parallel=command("spawning_task.py"),
                args_np={
                    "pid_file": str(pid_file),
                    "marker_file": str(tmp_path / "marker"),
                    "sleep_seconds": 600,
                },
            )
            await s.c.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    project_id=s.pid, workflow_id=s.wid, dataset_id=s.did
                ),
                metadata=s.c.md,
            )
            await wait_until(pid_file.exists, 60.0, 0.1)
        pids = json.loads(pid_file.read_text())

        # kill -9 the runner: it comes back, and its task processes are gone.
        run.child("fractal-runner").kill()
        await run.wait_for("runner was killed by SIGKILL; restarting it in 1s")
        await run.wait_for("runner is running again")
        await wait_until(lambda: is_gone(pids["task_pid"]) and is_gone(pids["child_pid"]), 10.0)
        assert "killed the task processes job" in run.output
        run.child("fractal-runner")

        # kill -9 the api: it comes back and serves again.
        run.child("fractal-api").kill()
        await run.wait_for("api was killed by SIGKILL; restarting it in 1s")
        await run.wait_for("api is running again")
        assert await _login(api)

        # kill -9 NATS and PostgreSQL: they come back on their addresses, the api serves.
        run.child("nats-server").kill()
        await run.wait_for("NATS (pid")
        await run.wait_for("NATS is running again")
        run.child("nats-server")
        postmaster = int((state / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        await run.wait_for(f"PostgreSQL (pid {postmaster}) is gone; restarting it")
        await run.wait_for("PostgreSQL is running again")
        assert port_accepts("127.0.0.1", pg_port)
        deadline = time.monotonic() + 60
        while True:  # the api's pool notices the restarted server on a later call
            try:
                assert await _login(api)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, run.output
                await asyncio.sleep(0.5)
        run.child("fractal-api")
        run.child("fractal-runner")

        run.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(run.proc.wait, 60) == 0, run.output
        await wait_until(lambda: all(is_gone(pid) for pid in run.seen), 10.0)
        assert not port_accepts("127.0.0.1", pg_port)
        assert not port_accepts("127.0.0.1", api_port)
    finally:
        run.stop()
        for pid in run.seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_fractal_dev_run_is_not_ready_while_the_runner_cannot_reach_the_api(
    state: Path,
) -> None:
    wrong = f"127.0.0.1:{free_port()}"
    api_port = free_port()
    run = DevRun(state, api_port, "--startup-timeout", "20", FRACTAL_API_URL=wrong)
    try:
        code = await asyncio.to_thread(run.proc.wait, 180)
        run.stop()
        output = run.output
        assert code == 1, output
        assert "Press Ctrl-C" not in output and "is ready" not in output
        assert "runner was not ready" in output
        # Said while waiting too, not only at the end.
        assert f"still waiting for runner: it cannot reach the api at FRACTAL_API_URL={wrong}" in (
            output
        )
        assert f"it cannot reach the api at FRACTAL_API_URL={wrong} (nothing listens there" in (
            output
        )
        assert f"cannot reach the api at {wrong} (FRACTAL_API_URL)" in output  # runner's log
        assert not port_accepts("127.0.0.1", api_port)
    finally:
        run.stop()
