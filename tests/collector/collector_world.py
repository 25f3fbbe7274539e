"""A collector of the tests: its settings' environment and what a test gets to know of it.
(A module of its own, not the conftest: several test folders have a conftest, and only one of
them can be imported as ``conftest``.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
