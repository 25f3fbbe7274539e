"""``fractal-dev``: run the whole backend locally, the engine behind ``make run``.

``fractal-dev run`` starts, unless the environment already points elsewhere, an embedded
PostgreSQL and NATS, creates development keys, migrates and starts ``fractal-api`` and
``fractal-runner`` (then ``fractal-collector``, task collection), and says "ready" once the
runner has reached the api and NATS (its health answers SERVING). Then it supervises
(``fractal_devstack.supervisor``): a component that dies is restarted with backoff; the task
processes of a runner that died are killed first. Ctrl-C (or SIGTERM) stops exactly what it
started, in reverse order. ``fractal-dev postgres`` and ``fractal-dev nats`` run one component
alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from fractal_devstack.embedded import (
    LOOPBACK,
    DevStackError,
    EmbeddedNats,
    EmbeddedPostgres,
    RunLog,
    find_executable,
    free_port,
    port_accepts,
    port_is_free,
    stop_process_group,
)
from fractal_devstack.keys import ensure_dev_keys
from fractal_devstack.supervisor import (
    RESTART_LOG_LINES,
    RestartPolicy,
    SupervisedServer,
    Supervisor,
    describe_exit,
)
from fractal_runner.readiness import API_SERVICE
from fractal_runner.taskproc.ledger import LEDGER_FOLDER, kill_leftovers

DEFAULT_STATE_DIR = ".state"
DEFAULT_API_PORT = 50051
# How long a component may be unready before fractal-dev says what it is waiting for.
HINT_AFTER = 10.0

# ---------------------------------------------------------------------------------------
# Signals: SIGINT/SIGTERM/SIGHUP unwind the stack through an exception, then are ignored
# while stopping, so a second Ctrl-C cannot leave half-stopped servers behind.
# ---------------------------------------------------------------------------------------

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """Raised by the signal handler to stop the stack."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _ignore_stop_signals() -> None:
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------
# Child services
# ---------------------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[::1]:port"``) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DevStackError(f"invalid address {address!r}, expected host:port")
    return host.strip("[]") or LOOPBACK, int(port)


def dial_address(address: str) -> tuple[str, int]:
    """Where to connect to reach a server bound to ``address`` (wildcards → loopback)."""
    host, port = split_address(address)
    if host in ("0.0.0.0", "*"):
        host = LOOPBACK
    elif host == "::":
        host = "::1"
    return host, port


def health_status(address: str, service: str = "", timeout: float = 2.0) -> str | None:
    """What the standard gRPC health check of ``service`` answers at ``address``: a status
    (``"SERVING"``, ``"NOT_SERVING"``) or an error code (``"NOT_FOUND"``); None if nothing
    accepts connections there."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, port = dial_address(address)
    if not port_accepts(host, port):
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # A fresh channel per attempt: no reconnect back-off; never through an HTTP proxy.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return str(code.name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def grpc_serving(address: str, timeout: float = 2.0) -> bool:
    """Whether the standard gRPC health check (service ``""``) answers SERVING."""
    return health_status(address, timeout=timeout) == "SERVING"


class ChildService:
    """``{executable} serve`` in its own process group, output to ``{logs}/{name}.log``.

    Ready when its health check answers SERVING. ``why_not_ready`` explains a timeout;
    ``after_stop`` cleans up after the process (also after it died), before a restart.
    """

    def __init__(
        self,
        name: str,
        executable: str,
        address: str,
        logs_dir: Path,
        *,
        startup_timeout: float = 60.0,
        grace: float = 10.0,
        why_not_ready: Callable[[], str] | None = None,
        after_stop: Callable[[], None] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.name = name
        self.executable = executable
        self.address = address
        self.log = RunLog(logs_dir / f"{name}.log")
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.why_not_ready = why_not_ready
        self.after_stop = after_stop
        self.say = say
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def migrate(self, env: dict[str, str]) -> None:
        """Run ``{executable} migrate``; raise with its exit code and output if it fails."""
        with self.log.begin(f"{self.name} migrate") as log_handle:
            result = subprocess.run(
                [self.executable, "migrate"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            raise DevStackError(
                f"`{self.name} migrate` failed with exit code {result.returncode}; "
                f"{self.log.describe()}",
                exit_code=result.returncode,
            )

    def start(self, env: dict[str, str]) -> None:
        self.env = env
        with self.log.begin(f"{self.name} serve on {self.address}") as log_handle:
            self.proc = subprocess.Popen(
                [self.executable, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float) -> None:
        """Wait for SERVING; after ``HINT_AFTER`` seconds, say once what it is waiting for."""
        start = time.monotonic()
        deadline, hinted = start + timeout, False
        while not grpc_serving(self.address):
            code = self.returncode()
            if code is not None:
                raise DevStackError(
                    f"{self.name} {describe_exit(code)} while starting; {self.log.describe()}"
                )
            if not hinted and self.why_not_ready and time.monotonic() > start + HINT_AFTER:
                hinted = True
                if why := self.why_not_ready():
                    self.say(f"fractal-dev: still waiting for {self.name}{why}")
            if time.monotonic() > deadline:
                status = health_status(self.address) or "no answer"
                why = self.why_not_ready() if self.why_not_ready is not None else ""
                raise DevStackError(
                    f"{self.name} was not ready on {self.address} after {timeout:.0f}s "
                    f"(health: {status}){why}; {self.log.describe()}"
                )
            time.sleep(0.25)

    def returncode(self) -> int | None:
        """None while running (or never started), else the exit code."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM its process group (SIGKILL after ``grace``), then ``after_stop``."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process_group(proc, self.grace if grace is None else grace)
        if self.after_stop is not None:
            self.after_stop()

    # -- supervised (fractal_devstack.supervisor) -----------------------------------------

    def exit_reason(self) -> str | None:
        code = self.returncode()
        return None if code is None else describe_exit(code)

    def restart(self) -> None:
        self.stop()
        self.start(self.env)
        self.wait_healthy(self.startup_timeout)

    def log_hint(self) -> str:
        return self.log.describe(RESTART_LOG_LINES)


# ---------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------


def _set_default(env: dict[str, str], key: str, value: Callable[[], str]) -> None:
    """Set ``env[key]`` if unset or empty (``value`` is only computed then)."""
    if not env.get(key):
        env[key] = value()


class DevStack:
    """PostgreSQL, NATS, fractal-api and fractal-runner, started in that order."""

    def __init__(
        self,
        state_dir: Path,
        *,
        api_port: int = DEFAULT_API_PORT,
        bin_dir: Path | None = None,
        startup_timeout: float = 60.0,
        grace: float = 10.0,
        restart_policy: RestartPolicy | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        self.state_dir = state_dir.absolute()
        self.logs_dir = self.state_dir / "logs"
        self.api_port = api_port
        self.bin_dir = bin_dir
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.restart_policy = restart_policy or RestartPolicy()
        self.out = out
        self.env = dict(os.environ)
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.children: list[ChildService] = []
        self._stack = ExitStack()

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def _on_close(self, what: str, stop: Callable[[], None]) -> None:
        """Register ``stop`` to run (in reverse order) when the stack closes."""

        def stop_quietly() -> None:
            self.say(f"Stopping {what}…")
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"fractal-dev: stopping {what} failed: {exc}", file=sys.stderr, flush=True)

        self._stack.callback(stop_quietly)

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        env = self.env

        if not env.get("FRACTAL_DATABASE_URL"):
            self.say("Starting PostgreSQL…")
            self.postgres = EmbeddedPostgres(self.state_dir, startup_timeout=self.startup_timeout)
            self._on_close("PostgreSQL", self.postgres.stop)
            env["FRACTAL_DATABASE_URL"] = self.postgres.start()

        if not env.get("FRACTAL_NATS_URL"):
            self.say("Starting NATS…")
            self.nats = EmbeddedNats(self.state_dir, grace=self.grace)
            self._on_close("NATS", self.nats.stop)
            env["FRACTAL_NATS_URL"] = self.nats.start()

        # One pair for user tokens, one for service tokens; a pair set in the environment
        # (its private key file) is kept.
        dev_keys: dict[str, str] | None = None
        for pair in ("JWT", "SERVICE"):
            if not env.get(f"FRACTAL_{pair}_PRIVATE_KEY_FILE"):
                dev_keys = dev_keys or ensure_dev_keys(self.state_dir / "keys")
                for kind in ("PRIVATE", "PUBLIC"):
                    key = f"FRACTAL_{pair}_{kind}_KEY_FILE"
                    env[key] = dev_keys[key]

        api_address = f"{LOOPBACK}:{self.api_port}"
        _set_default(env, "FRACTAL_RUNNER_BACKEND", lambda: "local")
        _set_default(env, "FRACTAL_RUNNER_WORKING_BASE_DIR", lambda: str(self.state_dir / "jobs"))
        _set_default(env, "FRACTAL_API_ADDRESS", lambda: api_address)
        # The runner calls api's internal listener.
        _set_default(env, "FRACTAL_API_INTERNAL_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        _set_default(env, "FRACTAL_API_URL", lambda: env["FRACTAL_API_INTERNAL_ADDRESS"])
        _set_default(env, "FRACTAL_RUNNER_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        # api reads job logs and folders from the runner.
        _set_default(env, "FRACTAL_RUNNER_URL", lambda: env["FRACTAL_RUNNER_ADDRESS"])
        # Prometheus metrics of each service, on free ports (several runs can share a machine).
        _set_default(env, "FRACTAL_API_METRICS_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        _set_default(env, "FRACTAL_RUNNER_METRICS_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        _set_default(env, "FRACTAL_COLLECTOR_METRICS_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        # The collector's health listener, and where it keeps task environments.
        _set_default(env, "FRACTAL_COLLECTOR_ADDRESS", lambda: f"{LOOPBACK}:{free_port()}")
        _set_default(env, "FRACTAL_TASKS_DIR", lambda: str(self.state_dir / "tasks"))
        _set_default(env, "FRACTAL_DEFAULT_ADMIN_EMAIL", lambda: "admin@fractal.xy")
        _set_default(env, "FRACTAL_DEFAULT_ADMIN_PASSWORD", lambda: "1234")
        _set_default(env, "FRACTAL_NATS_PREFIX", lambda: "fractal")
        _set_default(env, "PYTHONUNBUFFERED", lambda: "1")
        Path(env["FRACTAL_RUNNER_WORKING_BASE_DIR"]).mkdir(parents=True, exist_ok=True)

        api = ChildService(
            "api",
            self._executable("fractal-api"),
            env["FRACTAL_API_ADDRESS"],
            self.logs_dir,
            startup_timeout=self.startup_timeout,
            grace=self.grace,
        )
        runner = ChildService(
            "runner",
            self._executable("fractal-runner"),
            env["FRACTAL_RUNNER_ADDRESS"],
            self.logs_dir,
            startup_timeout=self.startup_timeout,
            grace=self.grace,
            why_not_ready=self._why_runner_not_ready,
            after_stop=self._kill_task_processes,
            say=self.say,
        )
        collector = ChildService(
            "collector",
            self._executable("fractal-collector"),
            env["FRACTAL_COLLECTOR_ADDRESS"],
            self.logs_dir,
            startup_timeout=self.startup_timeout,
            grace=self.grace,
            say=self.say,
        )
        for child, variable in (
            (api, "FRACTAL_API_ADDRESS"),
            (runner, "FRACTAL_RUNNER_ADDRESS"),
            (collector, "FRACTAL_COLLECTOR_ADDRESS"),
        ):
            host, port = split_address(child.address)
            if not port_is_free(host, port):
                hint = " (use --api-port)" if child is api else ""
                raise DevStackError(
                    f"{child.address} ({variable}) is already in use{hint}; "
                    "is another fractal-dev running?"
                )

        for child in (api, runner, collector):
            self.say(f"Migrating {child.name}…")
            child.migrate(env)
        waiting = {
            api: "",
            runner: f" (ready once it has reached the api at {env['FRACTAL_API_URL']} and NATS)",
            collector: "",
        }
        for child in (api, runner, collector):
            self.say(f"Starting {child.name} on {child.address}…{waiting[child]}")
            self._on_close(child.name, child.stop)
            self.children.append(child)
            child.start(env)
            child.wait_healthy(self.startup_timeout)

    def _why_runner_not_ready(self) -> str:
        """What keeps the runner from being ready, if the stack can tell."""
        env = self.env
        status = health_status(env["FRACTAL_API_URL"], API_SERVICE)
        if status == "SERVING":
            return ""
        there = "nothing listens there" if status is None else f"{API_SERVICE} is {status} there"
        return (
            f": it cannot reach the api at FRACTAL_API_URL={env['FRACTAL_API_URL']} ({there}; "
            f"fractal-api listens on FRACTAL_API_ADDRESS={env['FRACTAL_API_ADDRESS']})"
        )

    def _kill_task_processes(self) -> None:
        """Kill what task processes the runner left running (its process ledger)."""
        ledger_dir = Path(self.env["FRACTAL_RUNNER_WORKING_BASE_DIR"]) / LEDGER_FOLDER
        for path in sorted(ledger_dir.iterdir()) if ledger_dir.is_dir() else []:
            killed = kill_leftovers(path)
            if killed:
                pids = ", ".join(map(str, killed))
                self.say(f"fractal-dev: killed the task processes job {path.name} left ({pids})")

    def _executable(self, name: str) -> str:
        path = find_executable(name, self.bin_dir)
        if path is None:
            where = self.bin_dir or f"{Path(sys.executable).parent} or PATH"
            raise DevStackError(f"{name} not found in {where}; is it installed?")
        return path

    def banner(self) -> str:
        env = self.env
        host, port = dial_address(env["FRACTAL_API_ADDRESS"])
        api = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        email = env["FRACTAL_DEFAULT_ADMIN_EMAIL"]
        password = env["FRACTAL_DEFAULT_ADMIN_PASSWORD"]
        login = json.dumps({"email": email, "password": password}, separators=(",", ":"))
        grpcurl = f"grpcurl -plaintext -d {shlex.quote(login)} {api} fractal.v2.AuthService/Login"
        logs = ", ".join(str(child.log.path) for child in self.children)
        lines = [
            "",
            "Fractal dev stack is ready.",
            f"  API        {api}  (gRPC, plaintext)",
            f"  Runner     {env['FRACTAL_RUNNER_ADDRESS']}",
            f"  Metrics    http://{env['FRACTAL_API_METRICS_ADDRESS']}/metrics (api), "
            f"http://{env['FRACTAL_RUNNER_METRICS_ADDRESS']}/metrics (runner), "
            f"http://{env['FRACTAL_COLLECTOR_METRICS_ADDRESS']}/metrics (collector)",
            f"  Admin      {email} / {password}",
            f"  Login      {grpcurl}",
            f"  Database   {env['FRACTAL_DATABASE_URL']}",
            f"  NATS       {env['FRACTAL_NATS_URL']}",
            f"  State      {self.state_dir}",
            f"  Logs       {logs}",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(lines)

    def supervise(self, poll: float = 0.5) -> None:
        """Restart what dies; raise once something cannot be brought back. Only a signal
        ends this normally."""
        servers = [
            SupervisedServer(title, server)
            for title, server in (("PostgreSQL", self.postgres), ("NATS", self.nats))
            if server is not None
        ]
        Supervisor([*servers, *self.children], self.say, self.restart_policy).run(poll)

    def close(self) -> None:
        """Stop everything started, in reverse order."""
        self._stack.close()


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def _fail(exc: DevStackError) -> int:
    print(f"fractal-dev: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    stack = DevStack(
        Path(args.state_dir),
        api_port=args.api_port,
        bin_dir=Path(args.bin_dir) if args.bin_dir else None,
        startup_timeout=args.startup_timeout,
        grace=args.grace,
        restart_policy=RestartPolicy(max_restarts=args.max_restarts),
    )
    with _stop_on_signals():
        try:
            try:
                stack.start()
                stack.say(stack.banner())
                stack.supervise()
            finally:
                _ignore_stop_signals()
                stack.close()
        except StopRequested:
            stack.say("Stopped.")
            return 0
        except DevStackError as exc:
            return _fail(exc)
    return 0  # not reached: supervise() only ends with an exception


def cmd_component(args: argparse.Namespace) -> int:
    component: EmbeddedPostgres | EmbeddedNats
    if args.command == "postgres":
        component, title, variable = (
            EmbeddedPostgres(args.state_dir, port=args.port),
            "PostgreSQL",
            "FRACTAL_DATABASE_URL",
        )
    else:
        component, title, variable = (
            EmbeddedNats(args.state_dir, port=args.port),
            "NATS",
            "FRACTAL_NATS_URL",
        )
    with _stop_on_signals():
        try:
            try:
                url = component.start()
                print(f"{title} is running: {url}", flush=True)
                print(f"export {variable}={shlex.quote(url)}", flush=True)
                print(f"Logs: {component.log.path}. Press Ctrl-C to stop.", flush=True)
                while component.is_running():
                    time.sleep(0.5)
                raise DevStackError(f"{title} exited unexpectedly; {component.log.describe()}")
            finally:
                _ignore_stop_signals()
                component.stop()
        except StopRequested:
            print("Stopped.", flush=True)
            return 0
        except DevStackError as exc:
            return _fail(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fractal-dev", description="Run the fractal-grpc backend locally."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_state_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--state-dir",
            default=DEFAULT_STATE_DIR,
            metavar="DIR",
            help="where data, keys and logs live (default: %(default)s)",
        )

    run = commands.add_parser("run", help="start the whole stack in the foreground")
    add_state_dir(run)
    run.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        metavar="N",
        help="port of the API on 127.0.0.1 (default: %(default)s)",
    )
    run.add_argument(
        "--bin-dir",
        metavar="DIR",
        help="directory holding fractal-api and fractal-runner "
        "(default: next to the Python interpreter, then PATH)",
    )
    run.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each component may take to start (default: %(default)s)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="SIGTERM-to-SIGKILL delay when stopping (default: %(default)s)",
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=RestartPolicy.max_restarts,
        metavar="N",
        help="restarts in a row of a component that keeps dying before giving up "
        "(default: %(default)s)",
    )
    run.set_defaults(handler=cmd_run)

    for name, title in (("postgres", "PostgreSQL"), ("nats", "NATS with JetStream")):
        sub = commands.add_parser(name, help=f"run only an embedded {title} in the foreground")
        add_state_dir(sub)
        sub.add_argument(
            "--port",
            type=int,
            default=None,
            metavar="N",
            help="TCP port on 127.0.0.1 (default: a free one)",
        )
        sub.set_defaults(handler=cmd_component)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Show what the embedded components report (re-used servers, permission changes).
    logging.basicConfig(format="fractal-dev: %(message)s", level=logging.WARNING)
    logging.getLogger("fractal_devstack").setLevel(logging.INFO)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
