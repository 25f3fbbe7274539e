"""The fault suite's world: PostgreSQL and NATS servers of its own (which it kills), and per
test an api and a runner as processes on a fresh database and NATS prefix.

The embedded servers are imported here only (their package is moving).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).parents[1] / "slurm"))

from e2e_stack import Stack, running_stack, stack_env  # noqa: E402
from fault_checks import FIGURES, figures_table  # noqa: E402
from fault_jobs import JOBS, SLURM_JOBS  # noqa: E402
from slurm_cluster_env import CHECK, CLUSTER_USER  # noqa: E402
from slurm_stack import runner_env  # noqa: E402
from slurm_world import CONFIG  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

from fractal_devstack.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402
from world import create_database  # noqa: E402


class Servers:
    """This suite's PostgreSQL and NATS, which it may kill -9 and start again (same data,
    same ports). The services reach PostgreSQL through ``db_proxy``, which can cut it off."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.pg = EmbeddedPostgres(state)
        self.nats = EmbeddedNats(state)
        self.db_proxy: TcpProxy | None = None

    def start(self) -> None:
        self.pg.start()
        assert self.pg.port is not None
        self.db_proxy = TcpProxy("127.0.0.1", self.pg.port)
        self.db_proxy.start()
        self.nats.start()

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats.port}"

    @property
    def pg_admin_url(self) -> str:
        """The server's maintenance database, through the proxy."""
        assert self.db_proxy is not None
        return f"postgresql://postgres@127.0.0.1:{self.db_proxy.port}/postgres"

    def kill_postgres(self) -> None:
        """SIGKILL the postmaster and every backend (a crash of the whole server)."""
        assert self.pg.pid is not None
        server = psutil.Process(self.pg.pid)
        processes = [server, *server.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        # Reaped, not only dead: pg_ctl takes a zombie postmaster for a running server.
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p.pid) for p in processes):
            assert time.monotonic() < deadline, "PostgreSQL processes not reaped after SIGKILL"
            time.sleep(0.05)

    def start_postgres(self) -> None:
        """Start PostgreSQL again on its data directory and port (crash recovery runs)."""
        self.pg = EmbeddedPostgres(self.state, port=self.pg.port)
        self.pg.start()

    def kill_nats(self) -> None:
        assert self.nats.pid is not None
        os.killpg(self.nats.pid, signal.SIGKILL)
        self.nats.stop()  # reaps it (the group is already gone)

    def start_nats(self) -> None:
        self.nats = EmbeddedNats(self.state, port=self.nats.port)
        self.nats.start()

    def stop(self) -> None:
        self.nats.stop()
        if self.db_proxy is not None:
            self.db_proxy.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    # Outside pytest's temporary tree: PostgreSQL (run as another user when root) must be
    # able to traverse every parent directory.
    state = Path(tempfile.mkdtemp(prefix="fractal-fault-", dir="/tmp"))
    started = Servers(state)
    try:
        started.start()
        yield started
    finally:
        started.stop()
        shutil.rmtree(state, ignore_errors=True)


_databases = count()


def _stack(
    servers: Servers, key_env: dict[str, str], run_id: str, state: Path, logs: Path, **extra: str
) -> Iterator[Stack]:
    """api and runner as processes, on a fresh database of this suite's PostgreSQL (through
    its proxy) and a fresh NATS prefix of its NATS; ``extra`` adds to their environment."""
    number = next(_databases)
    url = create_database(f"fault_{run_id}_{number}", servers.pg_admin_url)
    env = stack_env(
        key_env,
        database_url=url,
        nats_url=servers.nats_url,
        nats_prefix=f"f{run_id}{number}",
        state=state,
        FRACTAL_LOG_LEVEL="INFO",
        **extra,
    )
    if env.get("FRACTAL_RUNNER_BACKEND") == "slurm_sudo":
        env.update(runner_env("slurm_sudo", state, env["FRACTAL_API_URL"]))
    with running_stack(env, logs) as stack:
        yield stack


@pytest.fixture
def fault_stack(
    servers: Servers, key_env: dict[str, str], tmp_path: Path, run_id: str
) -> Iterator[Stack]:
    """The stack on the local executor."""
    yield from _stack(
        servers, key_env, run_id, tmp_path, tmp_path / "logs", FRACTAL_RUNNER_MAX_JOBS=str(JOBS)
    )


@pytest.fixture
def slurm_root() -> Iterator[Path]:
    """The folders of a SLURM scenario: ``jobs`` (the runner's, readable by the cluster user)
    and the SLURM config file, and ``user`` (the cluster user's: cache_dir, the invocation log,
    the gate). The local cluster must be up (``make cluster``)."""
    check = subprocess.run([str(CHECK)], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        pytest.fail(
            f"the local SLURM cluster is not up ({check.stderr.strip()}); run `make cluster`"
        )
    root = Path(tempfile.mkdtemp(prefix="fractal-fault-slurm-", dir="/tmp"))
    root.chmod(0o755)
    (root / "slurm.json").write_text(json.dumps(CONFIG))
    entry = pwd.getpwnam(CLUSTER_USER)
    gid = grp.getgrgid(entry.pw_gid).gr_gid
    for sub in ("user", "user/cache"):
        (root / sub).mkdir()
        os.chown(root / sub, entry.pw_uid, gid)
        (root / sub).chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm_fault_stack(
    servers: Servers, key_env: dict[str, str], tmp_path: Path, run_id: str, slurm_root: Path
) -> Iterator[Stack]:
    """The stack with the slurm_sudo backend on the local cluster."""
    yield from _stack(
        servers,
        key_env,
        run_id,
        slurm_root,
        tmp_path / "logs",
        FRACTAL_RUNNER_BACKEND="slurm_sudo",
        FRACTAL_RUNNER_MAX_JOBS=str(SLURM_JOBS),
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_sep("=", "fault matrix")
        terminalreporter.write_line(figures_table(FIGURES))
        for figures in FIGURES:
            for note in figures.notes:
                terminalreporter.write_line(f"{figures.scenario}: {note}")
