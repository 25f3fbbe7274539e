"""The command line every service shares: ``migrate`` applies its schema's migrations, ``serve``
migrates and runs it until SIGINT/SIGTERM. Bad settings exit 2 with a message naming the
variable, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from fractal_grpc import logs
from fractal_grpc.grpckit.server import run_until_signal
from fractal_grpc.migrate import upgrade
from fractal_grpc.settings import CommonSettings, SettingsError, load_settings


class Service(Protocol):
    def start(self) -> Awaitable[object]: ...

    def stop(self) -> Awaitable[None]: ...


S = TypeVar("S", bound=CommonSettings)


async def _serve(build: Callable[[S], Service], settings: S) -> None:
    service = build(settings)  # inside the loop: grpc.aio objects need one
    await run_until_signal(service.start, service.stop)


def service_main(
    *,
    prog: str,
    description: str | None,
    settings_class: type[S],
    schema: str = "",
    migrations: Path | None = None,
    build: Callable[[S], Service],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("command", choices=["migrate", "serve"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_class)
        logs.configure(
            settings.log_level, settings.log_format, service=prog.removeprefix("fractal-")
        )
        if migrations is not None:  # a service without a schema (the collector): nothing to do
            upgrade(migrations, settings.database_url, schema)
        if args.command == "serve":
            asyncio.run(_serve(build, settings))
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0
