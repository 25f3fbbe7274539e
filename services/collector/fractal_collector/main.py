"""``fractal-collector serve``: consume collection commands until SIGINT/SIGTERM. Bad settings
exit 2 with a message naming the variable. (The collector has no database schema of its own:
api keeps the collection records.)"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from fractal_grpc.grpckit.server import configure_logging, run_until_signal
from fractal_grpc.settings import CollectorSettings, SettingsError, load_settings


async def _serve(settings: CollectorSettings) -> None:
    from fractal_collector.app import CollectorApp

    app = CollectorApp(settings)
    await run_until_signal(app.start, app.stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fractal-collector", description=__doc__)
    # ``migrate`` is accepted like the other services' (make run migrates each service): the
    # collector has no schema, so there is nothing to do.
    parser.add_argument("command", choices=["migrate", "serve"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(CollectorSettings)
        configure_logging(settings.log_level)
        if args.command == "serve":
            asyncio.run(_serve(settings))
    except SettingsError as exc:
        print(f"fractal-collector: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
