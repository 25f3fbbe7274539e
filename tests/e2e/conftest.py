"""End to end: api and runner as real processes, on their own database and NATS prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest
from e2e_stack import Stack, running_stack, stack_env

from helpers import ApiClient
from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database


@pytest.fixture(scope="session")
def stack(key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"fractal_e2e_{RUN_ID}"
    prefix = f"e{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("e2e")
    env = stack_env(key_env, database_url=url, nats_url=NATS_URL, nats_prefix=prefix, state=state)
    try:
        with running_stack(env, state / "logs") as started:
            yield started
    finally:
        drop_database(name)
        delete_streams(prefix)


@pytest.fixture(scope="session")
async def e2e_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.api_address) as ch:
        yield ch


@pytest.fixture(scope="session")
async def e2e_admin(e2e_channel: grpc.aio.Channel) -> ApiClient:
    return await ApiClient.login(e2e_channel, "admin@fractal.xy", "1234")
