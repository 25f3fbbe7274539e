"""A collector in this process beside the session's api, installing from a folder of wheels
the tests build (no index, no network); once with uv and once with pip."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from collector_world import CollectorWorld, collector_env  # noqa: E402
from wheels import build_fixtures  # noqa: E402

from helpers import ApiClient  # noqa: E402
from world import RunningApi  # noqa: E402


@pytest.fixture(scope="module", params=["uv", "pip"])
async def collector(
    request: pytest.FixtureRequest,
    service_env: dict[str, str],
    api: RunningApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CollectorWorld]:
    from fractal_collector.app import CollectorApp
    from fractal_grpc.settings import CollectorSettings

    installer = str(request.param)
    tasks_dir = tmp_path_factory.mktemp(f"tasks-{installer}")
    wheels_dir = tmp_path_factory.mktemp(f"wheels-{installer}")
    wheels = build_fixtures(wheels_dir, installer)
    env = collector_env(service_env, tasks_dir, wheels_dir, installer)
    kwargs: dict[str, Any] = {k.removeprefix("FRACTAL_").lower(): v for k, v in env.items()}
    kwargs["api_url"] = api.internal_address
    app = CollectorApp(CollectorSettings(**kwargs))
    await app.start()
    try:
        yield CollectorWorld(installer, tasks_dir, wheels, wheels_dir)
    finally:
        await app.stop()


@pytest.fixture
async def verified(admin: ApiClient) -> ApiClient:
    return await admin.new_user(verified=True)
