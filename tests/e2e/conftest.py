"""End to end: api and runner as real processes, on their own database and NATS prefix."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest
from e2e_stack import Stack, start_service, wait_serving

from fractal_devstack.embedded import free_port
from helpers import ApiClient
from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database


@pytest.fixture(scope="session")
def stack(key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"fractal_e2e_{RUN_ID}"
    prefix = f"e{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("e2e")
    logs = state / "logs"
    logs.mkdir()
    api_address = f"127.0.0.1:{free_port()}"
    runner_address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        **key_env,
        "FRACTAL_DATABASE_URL": url,
        "FRACTAL_NATS_URL": NATS_URL,
        "FRACTAL_NATS_PREFIX": prefix,
        "FRACTAL_API_ADDRESS": api_address,
        "FRACTAL_API_URL": api_address,
        "FRACTAL_RUNNER_ADDRESS": runner_address,
        "FRACTAL_RUNNER_WORKING_BASE_DIR": str(state / "jobs"),
        "FRACTAL_API_SUBMIT_RATE_LIMIT": "0",
        "FRACTAL_GRACE_SECONDS": "1",
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["api"] = start_service("api", env, logs)
        wait_serving("api", api_address, processes["api"], logs)
        processes["runner"] = start_service("runner", env, logs)
        wait_serving("runner", runner_address, processes["runner"], logs)
        yield Stack(api_address, env, processes, logs)
    finally:
        for proc in reversed(list(processes.values())):
            proc.terminate()
        for proc in processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(name)
        delete_streams(prefix)


@pytest.fixture(scope="session")
async def e2e_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.api_address) as ch:
        yield ch


@pytest.fixture(scope="session")
async def e2e_admin(e2e_channel: grpc.aio.Channel) -> ApiClient:
    return await ApiClient.login(e2e_channel, "admin@fractal.xy", "1234")
