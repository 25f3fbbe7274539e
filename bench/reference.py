"""fractal-server 2.3.11 itself, installed from the package index and run beside ours in the
same benchmark run, so that its figures come from this machine, at this moment, under the
same load.

- ``ensure_installed()``: a venv of its own under ``.state/bench/`` (git-ignored, reused by
  later runs), with the pins of ``bench/reference-requirements.txt``. Nothing of it is in our
  lock or in the repository.
- ``ReferenceServer``: a fresh database ``fractal_ref_<hex>`` on the same PostgreSQL, its
  settings as environment variables (local backend, the job folders in the run's state
  directory), ``fractalctl set-db``, then one uvicorn process (no access log, warnings only:
  like our api process at ``FRACTAL_LOG_LEVEL=WARNING``), stopped and dropped by ``close()``.
- ``RefClient``: the few REST calls the benchmarks make, over one keep-alive HTTP/1.1
  connection (standard library only: its cost per call is a few tens of µs).

When it cannot be installed or started, ``ReferenceUnavailable`` says why and the report shows
that reason instead of figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from fractal_devstack.embedded import LOOPBACK, free_port

VERSION = "2.3.11"
BENCH_DIR = Path(__file__).resolve().parent
REQUIREMENTS = BENCH_DIR / "reference-requirements.txt"
STATE_ROOT = BENCH_DIR.parent / ".state" / "bench"
VENV = STATE_ROOT / f"fractal-server-{VERSION}"
INSTALL_TIMEOUT = 600.0
STARTUP_TIMEOUT = 60.0
ADMIN_EMAIL = "admin@fractal.xy"
ADMIN_PASSWORD = "1234"
TERMINAL = ("done", "failed")


class ReferenceUnavailable(RuntimeError):
    """fractal-server could not be installed or started here; the message says why."""


class RefError(RuntimeError):
    """An answer of fractal-server that the benchmark did not expect."""


def _run(argv: list[str], what: str, timeout: float, **kwargs: Any) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReferenceUnavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise ReferenceUnavailable(f"{what} exited with {done.returncode}: " + "\n".join(tail))
    return done.stdout


def ensure_installed() -> Path:
    """The reference's python, installing it first if this machine has not yet (~10 s with a
    warm uv cache). A venv whose marker does not match the requirements file is rebuilt."""
    python = VENV / "bin" / "python"
    marker = VENV / ".bench-installed"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise ReferenceUnavailable(f"uv not found at {uv} (make install)")
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    # Built in place (a venv's scripts name their interpreter by absolute path); the marker is
    # written last, so an interrupted install is redone by the next run.
    shutil.rmtree(VENV, ignore_errors=True)
    _run([str(uv), "venv", "--quiet", "--python", sys.executable, str(VENV)], "uv venv", 120)
    _run(
        [str(uv), "pip", "install", "--quiet", "--python", str(python), "-r", str(REQUIREMENTS)],
        f"installing fractal-server {VERSION}",
        INSTALL_TIMEOUT,
    )
    marker.write_text(wanted)
    return python


def _pg_parts(admin_url: str) -> dict[str, str]:
    parsed = urllib.parse.urlsplit(admin_url)
    return {
        "POSTGRES_HOST": parsed.hostname or LOOPBACK,
        "POSTGRES_PORT": str(parsed.port or 5432),
        "POSTGRES_USER": urllib.parse.unquote(parsed.username or "postgres"),
        "POSTGRES_PASSWORD": urllib.parse.unquote(parsed.password or ""),
    }


class ReferenceServer:
    """One fractal-server process with its own database; ``close()`` removes both."""

    def __init__(self, state_dir: Path, run_id: str, pg_admin_url: str) -> None:
        self.dir = state_dir / "reference"
        self.pg_admin_url = pg_admin_url
        self.db_name = f"fractal_ref_{run_id}"
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.db_created = False
        self.python: Path | None = None

    @property
    def jobs_dir(self) -> Path:
        return self.dir / "jobs"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def db_url(self) -> str:
        return self.pg_admin_url.rsplit("/", 1)[0] + f"/{self.db_name}"

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        return {
            **base,
            **_pg_parts(self.pg_admin_url),
            "DB_ENGINE": "postgres-psycopg",
            "POSTGRES_DB": self.db_name,
            "JWT_SECRET_KEY": secrets.token_hex(32),
            "JWT_EXPIRE_SECONDS": "86400",
            "FRACTAL_TASKS_DIR": str(self.dir / "tasks"),
            "FRACTAL_RUNNER_WORKING_BASE_DIR": str(self.jobs_dir),
            "FRACTAL_RUNNER_BACKEND": "local",
            "FRACTAL_API_V1_MODE": "exclude",
            # Ours runs with the submit rate limit off too (FRACTAL_API_SUBMIT_RATE_LIMIT=0).
            "FRACTAL_API_SUBMIT_RATE_LIMIT": "0",
            "FRACTAL_LOGGING_LEVEL": "30",
            "FRACTAL_DEFAULT_ADMIN_EMAIL": ADMIN_EMAIL,
            "FRACTAL_DEFAULT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PYTHONUNBUFFERED": "1",
        }

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.pg_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def start(self) -> None:
        """Install if needed, create the database and the schema, start the server and wait
        until it answers (blocking; call it in a thread from a loop). Raises
        ReferenceUnavailable with the reason."""
        self.python = ensure_installed()
        for sub in ("tasks", "jobs", "cwd"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        asyncio.run(self._admin(f'CREATE DATABASE "{self.db_name}"'))
        self.db_created = True
        env = self._env()
        # cwd: an empty folder, so that no stray .fractal_server.env is read.
        cwd = self.dir / "cwd"
        fractalctl = str(self.python.parent / "fractalctl")
        _run([fractalctl, "set-db"], "fractalctl set-db", 120, env=env, cwd=cwd)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [
                    str(self.python),
                    "-m",
                    "uvicorn",
                    "fractal_server.main:app",
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--timeout-keep-alive",
                    "600",
                    "--log-level",
                    "warning",
                ],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_alive()

    def _wait_alive(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ReferenceUnavailable(
                    f"fractal-server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError, RefError):
                body = RefClient(self.address).call("GET", "/api/alive/")
                if body.get("version") == VERSION:
                    return
                raise ReferenceUnavailable(f"/api/alive/ answered {body}")
            time.sleep(0.2)
        raise ReferenceUnavailable(f"fractal-server did not answer in {STARTUP_TIMEOUT:.0f} s")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> list[str]:
        """Stop the process group (SIGTERM, then SIGKILL after 10 s) and drop the database."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if self.db_created:
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
                self.db_created = False
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                problems.append(f"dropping database {self.db_name}: {exc}")
        return problems


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class RefClient:
    """REST calls to fractal-server over one keep-alive connection (blocking: the benchmark
    makes one call at a time)."""

    def __init__(self, address: str, token: str = "") -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        self.token = token

    def raw(
        self, method: str, path: str, body: Any = None, form: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed the idle keep-alive connection: connect again, once.
                self.conn.close()
                if attempt == 2:
                    raise
            except (http.client.HTTPException, OSError):
                self.conn.close()
                raise
        raise AssertionError("unreachable")

    def call(
        self, method: str, path: str, body: Any = None, form: Mapping[str, str] | None = None
    ) -> Any:
        status, payload = self.raw(method, path, body, form)
        if status >= 300:
            raise RefError(f"{method} {path}: HTTP {status}: {payload[:500]!r}")
        return json.loads(payload) if payload else None

    @classmethod
    def login(cls, address: str, email: str, password: str) -> RefClient:
        client = cls(address)
        answer = client.call(
            "POST", "/auth/token/login/", form={"username": email, "password": password}
        )
        client.token = answer["access_token"]
        return client

    def new_user(self) -> RefClient:
        """A verified user with a username (as this superuser), logged in."""
        email = f"bench-{secrets.token_hex(4)}@example.org"
        user = self.call(
            "POST",
            "/auth/register/",
            {"email": email, "password": "bench-pw", "username": email.split("@")[0]},
        )
        self.call("PATCH", f"/auth/users/{user['id']}/", {"is_verified": True})
        return RefClient.login(self.address, email, "bench-pw")

    def new_project(self, name: str | None = None) -> int:
        body = {"name": name or f"p-{secrets.token_hex(3)}"}
        return int(self.call("POST", "/api/v2/project/", body)["id"])

    def import_dataset(self, project_id: int, zarr_dir: str, images: list[dict[str, Any]]) -> int:
        """A dataset with these images in one call (the reference's only bulk path)."""
        body = {
            "name": f"ds-{secrets.token_hex(3)}",
            "zarr_dir": zarr_dir,
            "images": images,
            "filters": {"attributes": {}, "types": {}},
        }
        return int(self.call("POST", f"/api/v2/project/{project_id}/dataset/import/", body)["id"])

    def new_dataset(self, project_id: int, zarr_dir: str) -> int:
        body = {"name": f"ds-{secrets.token_hex(3)}", "zarr_dir": zarr_dir}
        return int(self.call("POST", f"/api/v2/project/{project_id}/dataset/", body)["id"])

    def add_image(self, project_id: int, dataset_id: int, image: dict[str, Any]) -> None:
        self.call("POST", f"/api/v2/project/{project_id}/dataset/{dataset_id}/images/", image)

    def query_images(
        self,
        project_id: int,
        dataset_id: int,
        filters: dict[str, Any],
        page: int,
        page_size: int,
    ) -> dict[str, Any]:
        path = (
            f"/api/v2/project/{project_id}/dataset/{dataset_id}/images/query/"
            f"?page={page}&page_size={page_size}"
        )
        answer: dict[str, Any] = self.call("POST", path, {"filters": filters})
        return answer

    def new_parallel_task(self, command: str, meta: Mapping[str, Any]) -> int:
        body = {
            "name": f"bench-trivial-{secrets.token_hex(3)}",
            "source": f"bench-{secrets.token_hex(3)}",
            "command_parallel": command,
            "meta_parallel": dict(meta),
        }
        return int(self.call("POST", "/api/v2/task/", body)["id"])

    def new_workflow(
        self, project_id: int, task_id: int, meta: Mapping[str, Any], tasks: int = 1
    ) -> int:
        """A workflow of ``tasks`` workflow tasks, each the task ``task_id``."""
        body = {"name": f"wf-{secrets.token_hex(3)}"}
        workflow_id = int(self.call("POST", f"/api/v2/project/{project_id}/workflow/", body)["id"])
        for _ in range(tasks):
            self.call(
                "POST",
                f"/api/v2/project/{project_id}/workflow/{workflow_id}/wftask/?task_id={task_id}",
                {"meta_parallel": dict(meta)},
            )
        return workflow_id

    def submit_and_wait(
        self, project_id: int, workflow_id: int, dataset_id: int, poll: float, timeout: float
    ) -> dict[str, Any]:
        """Submit, then poll the job every ``poll`` seconds until done or failed."""
        job = self.call(
            "POST",
            f"/api/v2/project/{project_id}/job/submit/"
            f"?workflow_id={workflow_id}&dataset_id={dataset_id}",
            {},
        )
        deadline = time.monotonic() + timeout
        path = f"/api/v2/project/{project_id}/job/{job['id']}/"
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise RefError(f"job {job['id']} still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)
            job = self.call("GET", path)
        return dict(job)


def server_seconds(job: Mapping[str, Any]) -> float | None:
    """end − start as the reference records them (its own clock, no polling delay)."""
    start, end = _timestamp(job.get("start_timestamp")), _timestamp(job.get("end_timestamp"))
    return (end - start).total_seconds() if start and end else None
