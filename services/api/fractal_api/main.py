"""``fractal-api``: ``migrate`` applies the api schema's migrations; ``serve`` migrates and runs
the service."""

from __future__ import annotations

import sys
from pathlib import Path

from fractal_grpc.service_main import Service, service_main
from fractal_grpc.settings import ApiSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: ApiSettings) -> Service:
    from fractal_api.app import ApiApp

    return ApiApp(settings)


def main(argv: list[str] | None = None) -> int:
    return service_main(
        prog="fractal-api",
        description=__doc__,
        settings_class=ApiSettings,
        schema="api",
        migrations=MIGRATIONS,
        build=build,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
