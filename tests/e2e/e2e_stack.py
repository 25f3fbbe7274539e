"""The end-to-end stack: api and runner as processes (used by the e2e and fault suites).

``stack_env`` is the one place that decides the services' addresses and environment;
``running_stack`` starts api, then the runner, and stops both at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fractal_devstack.cli import grpc_serving
from fractal_devstack.embedded import free_port

BIN = Path(sys.executable).parent

#: The variables holding the addresses where each service answers its health checks.
HEALTH_ADDRESSES = {
    "api": ("FRACTAL_API_ADDRESS", "FRACTAL_API_INTERNAL_ADDRESS"),
    "runner": ("FRACTAL_RUNNER_ADDRESS",),
    "collector": ("FRACTAL_COLLECTOR_ADDRESS",),
}


def listener_env() -> dict[str, str]:
    """Free loopback ports for api's two listeners and the runner, and the runner pointed at
    api's internal listener: the environment that places the processes of a stack."""
    internal = f"127.0.0.1:{free_port()}"
    runner = f"127.0.0.1:{free_port()}"
    return {
        "FRACTAL_API_ADDRESS": f"127.0.0.1:{free_port()}",
        "FRACTAL_API_INTERNAL_ADDRESS": internal,
        "FRACTAL_API_URL": internal,
        "FRACTAL_RUNNER_ADDRESS": runner,
        # api reads job logs and folders from the runner's listener.
        "FRACTAL_RUNNER_URL": runner,
        "FRACTAL_API_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "FRACTAL_RUNNER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        # The collector (started only by the tests that need one): its health listener.
        "FRACTAL_COLLECTOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "FRACTAL_COLLECTOR_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
    }


@dataclass
class Stack:
    api_address: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path

    @property
    def api_internal_address(self) -> str:
        """api's internal listener (fractal.internal.v1)."""
        return self.env["FRACTAL_API_INTERNAL_ADDRESS"]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def stack_env(
    key_env: Mapping[str, str],
    *,
    database_url: str,
    nats_url: str,
    nats_prefix: str,
    state: Path,
    **extra: str,
) -> dict[str, str]:
    """The environment of one stack's api and runner, on free loopback ports; ``extra``
    adds or overrides variables."""
    return {
        **os.environ,
        **key_env,
        "FRACTAL_DATABASE_URL": database_url,
        "FRACTAL_NATS_URL": nats_url,
        "FRACTAL_NATS_PREFIX": nats_prefix,
        **listener_env(),
        "FRACTAL_RUNNER_WORKING_BASE_DIR": str(state / "jobs"),
        "FRACTAL_API_SUBMIT_RATE_LIMIT": "0",
        "FRACTAL_GRACE_SECONDS": "1",
        **extra,
    }


@contextmanager
def running_stack(env: dict[str, str], logs: Path) -> Iterator[Stack]:
    """api, then the runner, as processes logging into ``logs``; both stopped at the end."""
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(env["FRACTAL_API_ADDRESS"], env, {}, logs)
    try:
        start(stack, "api")
        start(stack, "runner")
        yield stack
    finally:
        for proc in reversed(list(stack.processes.values())):
            proc.terminate()
        for proc in stack.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_service(
    name: str, env: dict[str, str], logs: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    out = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        [str(BIN / f"fractal-{name}"), "serve"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=cwd,
    )


def wait_serving(name: str, address: str, proc: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while not grpc_serving(address, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fractal-{name} did not become healthy:\n{text}")
        time.sleep(0.1)


def start(stack: Stack, name: str) -> None:
    """Start service ``name`` ("api", "runner" or "collector") and wait until it is healthy."""
    stack.processes[name] = start_service(name, stack.env, stack.logs)
    for variable in HEALTH_ADDRESSES[name]:
        wait_serving(name, stack.env[variable], stack.processes[name], stack.logs)


def kill(stack: Stack, name: str, sig: int) -> None:
    """Send ``sig`` to service ``name``'s process group (SIGKILL: a crash) and reap it."""
    old = stack.processes[name]
    os.killpg(old.pid, sig)
    old.wait(30)
    assert sig != signal.SIGKILL or old.returncode == -signal.SIGKILL


def restart_runner(stack: Stack, sig: int) -> None:
    """Stop the runner process with ``sig`` (SIGKILL: a crash) and start a new one."""
    kill(stack, "runner", sig)
    start(stack, "runner")
