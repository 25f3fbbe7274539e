"""`make run`'s engine, `fractal-dev run`, on embedded PostgreSQL and NATS from their wheels:
it comes up, the printed login works, and Ctrl-C stops everything it started."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from fractal_devstack.embedded import free_port, port_accepts

BIN = Path(sys.executable).parent


def test_fractal_dev_run_embedded_stack() -> None:
    # Not under pytest's tmp dir: as root, the embedded postgres user must traverse the path.
    state = Path(tempfile.mkdtemp(prefix="fractal-dev-test-", dir="/tmp"))
    os.chmod(state, 0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FRACTAL_") or k.startswith("FRACTAL_TEST")
    }
    api_port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "fractal-dev"), "run", "--state-dir", str(state), "--api-port", str(api_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    started: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        banner = "".join(output)
        assert "Press Ctrl-C to stop" in banner, banner
        login = re.search(r"Login\s+(grpcurl .+)$", banner, re.MULTILINE)
        assert login is not None, banner
        # nats, api and runner are children; postgres daemonises (pg_ctl), so watch its port.
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 3
        database = re.search(r"Database\s+\S+@127\.0\.0\.1:(\d+)/", banner)
        assert database is not None, banner
        assert port_accepts("127.0.0.1", int(database.group(1)))
        args = [str(BIN / "grpcurl"), "-plaintext", "-d"]
        body = json.dumps({"email": "admin@fractal.xy", "password": "1234"})
        reply = subprocess.run(
            [*args, body, f"127.0.0.1:{api_port}", "fractal.v2.AuthService/Login"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert reply.returncode == 0, reply.stderr
        assert "access_token" in reply.stdout or "accessToken" in reply.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        _, alive = psutil.wait_procs(started, 10)
        assert not alive, alive
        assert not port_accepts("127.0.0.1", int(database.group(1)))
    finally:
        # Even after a failed assertion, stop what the stack started (its children have their
        # own process groups): ask it first, then kill what is left.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for child in started:
            with contextlib.suppress(psutil.Error):
                child.kill()
        shutil.rmtree(state, ignore_errors=True)
