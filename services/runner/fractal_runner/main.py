"""``fractal-runner``: ``migrate`` applies the runner schema's migrations; ``serve`` runs the
service (migrating first)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fractal_grpc.grpckit.server import configure_logging, run_until_signal
from fractal_grpc.migrate import upgrade
from fractal_grpc.settings import RunnerSettings, SettingsError, load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(settings: RunnerSettings) -> None:
    upgrade(MIGRATIONS, settings.database_url, "runner")


async def serve(settings: RunnerSettings) -> None:
    from fractal_runner.app import RunnerApp

    app = RunnerApp(settings)
    await run_until_signal(app.start, app.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fractal-runner", description=__doc__)
    parser.add_argument("command", choices=["migrate", "serve"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(RunnerSettings)
        configure_logging(settings.log_level)
        if args.command == "migrate":
            migrate(settings)
        else:
            migrate(settings)
            asyncio.run(serve(settings))
    except SettingsError as exc:
        print(f"fractal-runner: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
