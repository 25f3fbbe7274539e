"""The end-to-end stack: api and runner as processes (used by the e2e conftest and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fractal_devstack.cli import grpc_serving

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    api_address: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def start_service(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    out = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [str(BIN / f"fractal-{name}"), "serve"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_serving(name: str, address: str, proc: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while not grpc_serving(address, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fractal-{name} did not become healthy:\n{text}")
        time.sleep(0.1)


def restart_runner(stack: Stack, sig: int) -> None:
    """Stop the runner process with ``sig`` (SIGKILL: a crash) and start a new one."""
    old = stack.processes["runner"]
    os.killpg(old.pid, sig)
    old.wait(30)
    assert sig != signal.SIGKILL or old.returncode == -signal.SIGKILL
    stack.processes["runner"] = start_service("runner", stack.env, stack.logs)
    wait_serving(
        "runner", stack.env["FRACTAL_RUNNER_ADDRESS"], stack.processes["runner"], stack.logs
    )
