"""``fractal-collector serve``: consume collection commands until SIGINT/SIGTERM. Bad settings
exit 2 with a message naming the variable. ``migrate`` is accepted like the other services'
(make run migrates each service) and does nothing: api keeps the collection records, the
collector has no schema of its own."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fractal_grpc.service_main import Service, service_main
from fractal_grpc.settings import CollectorSettings


def build(settings: CollectorSettings) -> Service:
    from fractal_collector.app import CollectorApp

    return CollectorApp(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        prog="fractal-collector",
        description=__doc__,
        settings_class=CollectorSettings,
        build=build,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
