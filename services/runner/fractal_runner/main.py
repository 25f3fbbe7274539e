"""``fractal-runner``: ``migrate`` applies the runner schema's migrations; ``serve`` migrates
and runs the service."""

from __future__ import annotations

import sys
from pathlib import Path

from fractal_grpc.service_main import Service, service_main
from fractal_grpc.settings import RunnerSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: RunnerSettings) -> Service:
    from fractal_runner.app import RunnerApp
    from fractal_runner.taskproc.local_executor import use_pidfd_child_watcher

    use_pidfd_child_watcher()  # one waiting thread per task process otherwise (Python 3.11)
    return RunnerApp(settings)


def main(argv: list[str] | None = None) -> int:
    return service_main(
        prog="fractal-runner",
        description=__doc__,
        settings_class=RunnerSettings,
        schema="runner",
        migrations=MIGRATIONS,
        build=build,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
