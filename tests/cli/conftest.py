"""The CLI and the client against real services: api and runner as processes (as tests/e2e),
on a database and NATS prefix of their own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from cli_helpers import ADMIN, Cli  # noqa: E402
from e2e_stack import Stack, running_stack, stack_env  # noqa: E402

from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database  # noqa: E402


@pytest.fixture(scope="session")
def cli_stack(key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"fractal_cli_{RUN_ID}"
    prefix = f"c{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("cli")
    env = stack_env(key_env, database_url=url, nats_url=NATS_URL, nats_prefix=prefix, state=state)
    try:
        with running_stack(env, state / "logs") as started:
            yield started
    finally:
        drop_database(name)
        delete_streams(prefix)


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def cli_env(cli_stack: Stack, cli_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FRACTAL_") and not k.startswith("XDG_")
    }
    env.update(
        HOME=str(cli_home),
        FRACTAL_SERVER=cli_stack.api_address,
        COLUMNS="200",
        NO_COLOR="1",
    )
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    """The CLI as the default superuser (credentials in the environment)."""
    return Cli({**cli_env, "FRACTAL_USER": ADMIN[0], "FRACTAL_PASSWORD": ADMIN[1]})
