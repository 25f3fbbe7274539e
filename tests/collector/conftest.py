"""A collector in this process beside the session's api, installing from a folder of wheels
the tests build (no index, no network); once with uv and once with pip."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from wheels import build_fixtures  # noqa: E402

from helpers import ApiClient  # noqa: E402
from world import RunningApi  # noqa: E402


@dataclass
class CollectorWorld:
    installer: str
    tasks_dir: Path
    wheels: dict[str, Path]
    wheels_dir: Path


def collector_env(
    service_env: dict[str, str], tasks_dir: Path, wheels_dir: Path, installer: str, **extra: str
) -> dict[str, str]:
    """The FRACTAL_* environment of a collector of the tests."""
    return {
        **service_env,
        "FRACTAL_COLLECTOR_ADDRESS": "127.0.0.1:0",
        "FRACTAL_TASKS_DIR": str(tasks_dir),
        "FRACTAL_COLLECTOR_INSTALLER": installer,
        "FRACTAL_COLLECTOR_NO_INDEX": "true",
        "FRACTAL_COLLECTOR_FIND_LINKS": str(wheels_dir),
        "FRACTAL_COLLECTOR_LEASE_SECONDS": "3",
        **extra,
    }


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
