"""What a benchmark run stands on: a fresh database on the machine's PostgreSQL, its own NATS
streams, development keys, and ``fractal-api`` / ``fractal-runner`` as separate processes.

Everything is created per run and removed by ``close()``: the processes (whole process groups),
the database (``DROP DATABASE … WITH (FORCE)``), the NATS streams and the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats

from bench.reference import ReferenceServer
from fractal_devstack.cli import ChildService
from fractal_devstack.embedded import LOOPBACK, find_executable, free_port
from fractal_devstack.keys import ensure_dev_keys
from fractal_grpc.events.bus import Subjects

PG_ADMIN_URL = os.environ.get("FRACTAL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("FRACTAL_BENCH_NATS", "nats://127.0.0.1:4222")
ADMIN_EMAIL = "admin@fractal.xy"
ADMIN_PASSWORD = "1234"
STARTUP_TIMEOUT = 60.0
STOP_GRACE = 10.0


def _loopback_only(url: str, what: str) -> None:
    host = url.split("://", 1)[-1].split("@")[-1].split("/")[0].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit(f"bench: {what} must be on the loopback interface, got {url}")


async def _admin_exec(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class BenchStack:
    """The per-run world. ``open()`` creates the database and keys; ``start_api()`` /
    ``start_runner()`` start the services; ``close()`` undoes all of it (idempotent)."""

    def __init__(self, keep_state: bool = False) -> None:
        _loopback_only(PG_ADMIN_URL, "FRACTAL_BENCH_PG")
        _loopback_only(NATS_URL, "FRACTAL_BENCH_NATS")
        self.run_id = secrets.token_hex(4)
        self.db_name = f"fractal_bench_{self.run_id}"
        self.nats_prefix = f"b{self.run_id}"
        # Made by open(); /tmp/fractal-bench-<hex> until then (only a name).
        self.state_dir = Path(tempfile.gettempdir()) / f"fractal-bench-{self.run_id}"
        self.state_created = False
        self.keep_state = keep_state
        self.api_address = f"{LOOPBACK}:{free_port()}"
        # api's internal listener, which the runner calls.
        self.api_internal_address = f"{LOOPBACK}:{free_port()}"
        self.runner_address = f"{LOOPBACK}:{free_port()}"
        # Metrics endpoints of their own (the defaults may be taken by another stack).
        self.api_metrics_address = f"{LOOPBACK}:{free_port()}"
        self.runner_metrics_address = f"{LOOPBACK}:{free_port()}"
        self.children: list[ChildService] = []
        self.api: ChildService | None = None
        self.runner: ChildService | None = None
        self.db_created = False
        self.env: dict[str, str] = {}
        # fractal-server 2.3.11, started by start_reference(); None when not (yet) started.
        self.reference: ReferenceServer | None = None

    @property
    def database_url(self) -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{self.db_name}"

    @property
    def plain_database_url(self) -> str:
        """This run's database, as asyncpg takes it."""
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"

    @property
    def api_metrics_url(self) -> str:
        """The api's Prometheus endpoint."""
        return f"http://{self.api_metrics_address}/metrics"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def open(self) -> None:
        self.state_dir.mkdir(mode=0o700)
        self.state_created = True
        asyncio.run(_admin_exec(f'CREATE DATABASE "{self.db_name}"'))
        self.db_created = True
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        keys = ensure_dev_keys(self.state_dir / "keys")
        self.env = {
            **os.environ,
            **keys,
            "FRACTAL_DATABASE_URL": self.database_url,
            "FRACTAL_NATS_URL": NATS_URL,
            "FRACTAL_NATS_PREFIX": self.nats_prefix,
            "FRACTAL_API_ADDRESS": self.api_address,
            "FRACTAL_API_INTERNAL_ADDRESS": self.api_internal_address,
            "FRACTAL_API_URL": self.api_internal_address,
            "FRACTAL_RUNNER_ADDRESS": self.runner_address,
            "FRACTAL_API_METRICS_ADDRESS": self.api_metrics_address,
            "FRACTAL_RUNNER_METRICS_ADDRESS": self.runner_metrics_address,
            "FRACTAL_RUNNER_WORKING_BASE_DIR": str(self.jobs_dir),
            "FRACTAL_API_SUBMIT_RATE_LIMIT": "0",
            "FRACTAL_DEFAULT_ADMIN_EMAIL": ADMIN_EMAIL,
            "FRACTAL_DEFAULT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # Request logging at INFO would measure the log writer; errors still show.
            "FRACTAL_LOG_LEVEL": os.environ.get("FRACTAL_BENCH_LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
        }

    async def _execute(self, sql: str) -> float:
        """Run ``sql`` in this run's database; returns the seconds it took."""
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"
        conn = await asyncpg.connect(url)
        try:
            t0 = time.perf_counter()
            await conn.execute(sql)
            return time.perf_counter() - t0
        finally:
            await conn.close()

    async def analyze_images(self) -> None:
        """``ANALYZE api.images`` in this run's database (what autovacuum does after a while)."""
        await self._execute("ANALYZE api.images")

    async def settle_database(self) -> float:
        """``VACUUM (ANALYZE)`` this run's database: do now what autovacuum would do at some
        moment after the bulk loads, so that it does not land inside a timed run. Returns
        the seconds it took."""
        return await self._execute("VACUUM (ANALYZE)")

    def _executable(self, name: str) -> str:
        path = find_executable(name, Path(sys.executable).parent)
        if path is None:
            raise SystemExit(f"bench: {name} not found next to {sys.executable}; run make install")
        return path

    def _start(self, name: str, address: str) -> ChildService:
        child = ChildService(name, self._executable(f"fractal-{name}"), address, self.logs_dir)
        self.children.append(child)
        child.migrate(self.env)
        child.start(self.env)
        child.wait_healthy(STARTUP_TIMEOUT)
        return child

    def start_api(self) -> str:
        if self.api is None:
            self.api = self._start("api", self.api_address)
        return self.api_address

    def start_runner(self) -> None:
        if self.runner is None:
            self.start_api()
            self.runner = self._start("runner", self.runner_address)

    def start_reference(self) -> ReferenceServer:
        """fractal-server 2.3.11 on its own database (blocking: seconds, minutes when it has
        to be installed first). Raises ReferenceUnavailable with the reason."""
        if self.reference is None:
            self.reference = ReferenceServer(self.state_dir, self.run_id, PG_ADMIN_URL)
            self.reference.start()
        return self.reference

    def pid(self, name: str) -> int | None:
        if name == "reference":
            return self.reference.pid if self.reference is not None else None
        child = self.api if name == "api" else self.runner
        return child.proc.pid if child is not None and child.proc is not None else None

    def log_tail(self, name: str, lines: int = 30, width: int = 400) -> str:
        """The last lines of a service's log, each cut to ``width`` characters."""
        path = self.logs_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(line if len(line) <= width else line[:width] + " …" for line in tail)
        return ""

    def close(self) -> list[str]:
        """Stop and remove everything; returns the problems met (cleanup goes on past them)."""
        problems: list[str] = []
        for child in reversed(self.children):
            try:
                child.stop(STOP_GRACE)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                problems.append(f"stopping {child.name}: {exc}")
        self.children.clear()
        self.api = self.runner = None
        if self.reference is not None:
            problems.extend(self.reference.close())
            self.reference = None
        if self.db_created:
            try:
                asyncio.run(_admin_exec(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
                self.db_created = False
            except Exception as exc:  # noqa: BLE001
                problems.append(f"dropping database {self.db_name}: {exc}")
        try:
            asyncio.run(self._delete_streams())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"deleting NATS streams {self.nats_prefix}: {exc}")
        if self.state_created and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return problems

    async def _delete_streams(self) -> None:
        subjects = Subjects(self.nats_prefix)
        nc = await nats.connect(NATS_URL, connect_timeout=5, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            for stream in (subjects.command_stream, subjects.event_stream):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)
        finally:
            await nc.close()
