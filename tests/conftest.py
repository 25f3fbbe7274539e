"""Fixtures that build the world: a fresh database and NATS prefix per run, real services."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ApiClient, admin_of  # noqa: E402
from world import (
    NATS_URL,
    RUN_ID,
    SESSION_TOKEN_SECONDS,
    RunnerListener,
    RunningApi,
    create_database,
    delete_streams,
    delete_streams_async,
    drop_database,
    running_api,
)  # noqa: E402


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def key_env(state_dir: Path) -> dict[str, str]:
    from fractal_devstack.keys import ensure_dev_keys

    return ensure_dev_keys(state_dir / "keys")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of its own for this test run, migrated, dropped at the end."""
    name = f"fractal_test_{RUN_ID}"
    url = create_database(name)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def nats_prefix() -> Iterator[str]:
    """NATS subjects and streams of this run only; the streams are deleted at the end."""
    prefix = f"t{RUN_ID}"
    yield prefix
    delete_streams(prefix)


@pytest.fixture(scope="session")
def service_env(
    database_url: str, nats_prefix: str, key_env: dict[str, str], state_dir: Path
) -> dict[str, str]:
    """Environment shared by every service of this run."""
    return {
        **key_env,
        "FRACTAL_DATABASE_URL": database_url,
        "FRACTAL_NATS_URL": NATS_URL,
        "FRACTAL_NATS_PREFIX": nats_prefix,
        "FRACTAL_RUNNER_WORKING_BASE_DIR": str(state_dir / "jobs"),
        "FRACTAL_API_SUBMIT_RATE_LIMIT": "0",
        "FRACTAL_DEFAULT_ADMIN_EMAIL": "admin@fractal.xy",
        "FRACTAL_DEFAULT_ADMIN_PASSWORD": "1234",
        "FRACTAL_LOG_LEVEL": "INFO",
        # An api built from this environment has its internal listener on a random port
        # (running_api also puts the public one there).
        "FRACTAL_API_INTERNAL_ADDRESS": "127.0.0.1:0",
        # Metrics endpoints on random ports too (several services share this process).
        "FRACTAL_API_METRICS_ADDRESS": "127.0.0.1:0",
        "FRACTAL_RUNNER_METRICS_ADDRESS": "127.0.0.1:0",
        "FRACTAL_COLLECTOR_METRICS_ADDRESS": "127.0.0.1:0",
    }


@pytest.fixture(scope="session")
async def api(service_env: dict[str, str]) -> AsyncIterator[RunningApi]:
    """The api of this test session (its public and internal addresses)."""
    async with running_api(service_env) as running:
        yield running


@pytest.fixture(scope="session")
def api_address(api: RunningApi) -> str:
    """The session api's public listener (fractal.v2)."""
    return api.address


@pytest.fixture(scope="session")
def api_internal_address(api: RunningApi) -> str:
    """The session api's internal listener (fractal.internal.v1, the runner's FRACTAL_API_URL)."""
    return api.internal_address


@pytest.fixture(scope="session")
async def runner_listener(
    service_env: dict[str, str], state_dir: Path
) -> AsyncIterator[RunnerListener]:
    from fractal_grpc.settings import RunnerSettings
    from fractal_runner.job_folders import build_server

    """A runner's listener alone, for the api of ``runnerless_api``."""
    base = state_dir / "runner-listener-jobs"
    base.mkdir()
    env: dict[str, Any] = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(runner_address="127.0.0.1:0", runner_working_base_dir=str(base))
    server = build_server(RunnerSettings(**env))
    port = await server.start()
    try:
        yield RunnerListener(f"127.0.0.1:{port}", base)
    finally:
        await server.stop(0)


@pytest.fixture(scope="session")
async def runnerless_api(
    service_env: dict[str, str], nats_prefix: str, runner_listener: RunnerListener
) -> AsyncIterator[RunningApi]:
    """An api whose job commands no runner consumes (its own NATS prefix): for tests that play
    the runner themselves through the internal RPCs. Its job folders are those of
    ``runner_listener``."""
    prefix = f"{nats_prefix}q"
    try:
        async with running_api(
            service_env, nats_prefix=prefix, runner_url=runner_listener.address
        ) as running:
            yield running
    finally:
        await delete_streams_async(prefix)


@pytest.fixture(scope="session")
async def runnerless_admin(runnerless_api: RunningApi) -> AsyncIterator[ApiClient]:
    """The superuser of the runnerless api."""
    async with admin_of(runnerless_api) as admin:
        yield admin


@pytest.fixture(scope="session")
async def channel(api_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(api_address) as ch:
        yield ch


@pytest.fixture(scope="session")
async def internal_channel(api_internal_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(api_internal_address) as ch:
        yield ch


@pytest.fixture(scope="session")
async def admin(channel: grpc.aio.Channel, internal_channel: grpc.aio.Channel) -> ApiClient:
    """The superuser; its ``internal`` stub reaches the internal listener."""
    return await ApiClient.login(
        channel, "admin@fractal.xy", "1234", internal_channel=internal_channel
    )


@pytest.fixture
async def user(admin: ApiClient) -> ApiClient:
    """A fresh verified user with a username."""
    return await admin.new_user(verified=True)


@pytest.fixture
def service_md(key_env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Metadata with a service token, as the runner sends it to api's internal RPCs."""
    from fractal_grpc.auth.tokens import ServiceTokenSource

    key = Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text()
    return ServiceTokenSource(key, service="test-runner", lifetime=SESSION_TOKEN_SECONDS).metadata()
