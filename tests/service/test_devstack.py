"""The development stack: embedded PostgreSQL and NATS, dev keys and ``fractal-dev``.

Everything runs as real processes. ``fractal-dev run`` is driven with stand-in
``fractal-api``/``fractal-runner`` scripts (``--bin-dir``) that migrate, answer the gRPC
health check and record the environment they were given.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import jwt
import nats
import psutil
import pytest

import fractal_devstack
from fractal_devstack import EmbeddedNats, EmbeddedPostgres, ensure_dev_keys, generate_keypair
from fractal_devstack.cli import grpc_serving
from fractal_devstack.embedded import free_port, port_accepts

DEVSTACK_DIR = Path(fractal_devstack.__file__).resolve().parents[1]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh directory for a stack's state, outside pytest's base temporary directory.

    As root, PostgreSQL runs as another user, which must traverse the directories above
    its data; every pytest session resets ``/tmp/pytest-of-root`` to mode 0700, which would
    break a server living below it while another session starts.
    """
    path = Path(tempfile.mkdtemp(prefix="fractal-devstack-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Embedded servers
# ---------------------------------------------------------------------------------------


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        value: int = await conn.fetchval("select 1")
        return value
    finally:
        await conn.close()


async def test_embedded_postgres_over_tcp(state_dir: Path) -> None:
    state = state_dir
    pg = EmbeddedPostgres(state)
    url = pg.start()
    try:
        assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/fractal"
        assert await _select_one(url) == 1
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            await conn.execute("create table kept (x int)")
        finally:
            await conn.close()
    finally:
        pg.stop()
    assert pg.port is not None
    assert not port_accepts("127.0.0.1", pg.port)
    assert not pg.is_running()
    assert not (state / "pgdata" / "postmaster.pid").exists()

    # A second start re-uses the data directory (no initdb): the table is still there.
    with EmbeddedPostgres(state) as again:
        conn = await asyncpg.connect(again.url.replace("+asyncpg", ""))
        try:
            assert await conn.fetchval("select count(*) from kept") == 0
        finally:
            await conn.close()
    assert not again.is_running()


async def test_embedded_postgres_reuses_a_running_server_and_leaves_it_running(
    state_dir: Path,
) -> None:
    with EmbeddedPostgres(state_dir) as first:
        second = EmbeddedPostgres(state_dir)
        assert second.start() == first.url
        assert second.pid == first.pid
        second.stop()  # not started by `second`: left alone
        assert first.is_running()
        assert await _select_one(first.url) == 1
    assert first.port is not None
    assert not port_accepts("127.0.0.1", first.port)


async def test_embedded_nats_jetstream_roundtrip(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            stream = f"T{uuid.uuid4().hex}"
            subject = f"{stream}.hello"
            await js.add_stream(name=stream, subjects=[subject])
            subscription = await js.subscribe(subject)
            ack = await js.publish(subject, b"hello")
            assert ack.stream == stream
            message = await subscription.next_msg(timeout=5)
            assert message.data == b"hello"
            await message.ack()
        finally:
            await client.close()
        port, pid = server.port, server.pid
    assert port is not None and pid is not None
    assert not port_accepts("127.0.0.1", port)
    assert not psutil.pid_exists(pid)
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_embedded_nats_reuses_a_running_server_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    with EmbeddedNats(tmp_path) as first:
        second = EmbeddedNats(tmp_path)
        assert second.start() == first.url
        assert second.pid == first.pid
        second.stop()  # not started by `second`: left alone
        assert first.is_running()
        client = await nats.connect(first.url)
        await client.close()
    assert first.port is not None
    assert not port_accepts("127.0.0.1", first.port)


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def test_dev_keys_sign_and_verify_eddsa_tokens(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path / "keys")
    assert set(keys) == {
        "FRACTAL_JWT_PRIVATE_KEY_FILE",
        "FRACTAL_JWT_PUBLIC_KEY_FILE",
        "FRACTAL_SERVICE_PRIVATE_KEY_FILE",
        "FRACTAL_SERVICE_PUBLIC_KEY_FILE",
    }
    for path in keys.values():
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert (
        Path(keys["FRACTAL_JWT_PRIVATE_KEY_FILE"])
        .read_text()
        .startswith("-----BEGIN PRIVATE KEY-----")
    )
    assert (
        Path(keys["FRACTAL_JWT_PUBLIC_KEY_FILE"])
        .read_text()
        .startswith("-----BEGIN PUBLIC KEY-----")
    )

    def read(variable: str) -> str:
        return Path(keys[variable]).read_text()

    for pair in ("JWT", "SERVICE"):
        token = jwt.encode(
            {"sub": "42"}, read(f"FRACTAL_{pair}_PRIVATE_KEY_FILE"), algorithm="EdDSA"
        )
        claims = jwt.decode(token, read(f"FRACTAL_{pair}_PUBLIC_KEY_FILE"), algorithms=["EdDSA"])
        assert claims == {"sub": "42"}

    # The two pairs are distinct: a user-token key does not verify service tokens.
    user_token = jwt.encode({"sub": "1"}, read("FRACTAL_JWT_PRIVATE_KEY_FILE"), algorithm="EdDSA")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(user_token, read("FRACTAL_SERVICE_PUBLIC_KEY_FILE"), algorithms=["EdDSA"])

    # Generated once: a second call keeps the same keys.
    before = {variable: read(variable) for variable in keys}
    assert ensure_dev_keys(tmp_path / "keys") == keys
    assert {variable: read(variable) for variable in keys} == before


def test_generate_keypair_writes_private_files(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "a.pem", tmp_path / "a.pub")
    token = jwt.encode({"x": 1}, (tmp_path / "a.pem").read_text(), algorithm="EdDSA")
    assert jwt.decode(token, (tmp_path / "a.pub").read_text(), algorithms=["EdDSA"]) == {"x": 1}
    assert stat.S_IMODE((tmp_path / "a.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a.pub").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------------------
# The fractal-dev command
# ---------------------------------------------------------------------------------------

FAKE_SERVICE = """
import json, os, sys, threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

name = os.path.basename(sys.argv[0]).removeprefix("fractal-")
if sys.argv[1] == "migrate":
    if os.environ.get("FAKE_MIGRATE_FAIL") == name:
        print("migration exploded")
        sys.exit(7)
    print(name, "migrated")
    sys.exit(0)

record = {
    "pid": os.getpid(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("FRACTAL_")},
}
with open(os.path.join(os.environ["FAKE_OUT_DIR"], name + ".json"), "w") as handle:
    json.dump(record, handle)
if os.environ.get("FAKE_SERVE_FAIL") == name:
    print("serve exploded", flush=True)
    sys.exit(3)
address = os.environ[f"FRACTAL_{name.upper()}_ADDRESS"]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(address)
server.start()
print(name, "serving on", address, flush=True)
crash_once = os.path.join(os.environ["FAKE_OUT_DIR"], name + ".crashed")
if os.environ.get("FAKE_CRASH") == name or (
    os.environ.get("FAKE_CRASH_ONCE") == name and not os.path.exists(crash_once)
):
    with open(crash_once, "w") as handle:  # the pid of the process that crashes
        handle.write(str(os.getpid()))
    threading.Timer(1.0, lambda: (print("crashing", flush=True), os._exit(5))).start()
server.wait_for_termination()
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("fractal-api", "fractal-runner", "fractal-collector"):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n{FAKE_SERVICE}")
        script.chmod(0o755)
    (tmp_path / "out").mkdir()
    return bin_dir


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTAL_", "FAKE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(DEVSTACK_DIR), env.get("PYTHONPATH")]))
    env["FAKE_OUT_DIR"] = str(tmp_path / "out")
    env.update(extra)
    return env


def _spawn_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fractal_devstack.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float = 90.0) -> str:
    """Output of ``proc`` up to (at least) the line containing ``marker``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            output += chunk
            if marker.encode() in output:
                return output.decode()
    proc.terminate()  # lets fractal-dev stop what it started
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise AssertionError(f"no {marker!r} in the output:\n{output.decode(errors='replace')}")


def _finish(proc: subprocess.Popen[bytes], timeout: float = 180.0) -> tuple[int, str]:
    """Wait for ``proc`` to exit. The bound is a guard against a hang, not a speed check: a
    stop takes a second or two, but once in CI (2026-12-01) nats-server outlived its 10 s
    SIGTERM grace and, SIGKILLed, was not reaped for over 50 s more (a process blocked in the
    kernel on a slow disk, as far as could be told), and a 60 s bound ended the test first."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, output.decode(errors="replace")


def _assert_all_stopped(state: Path, out_dir: Path) -> None:
    assert not (state / "pgdata" / "postmaster.pid").exists()
    for name in ("postgres.port", "nats.port"):
        assert not port_accepts("127.0.0.1", int((state / name).read_text()))
    for record in out_dir.glob("*.json"):
        pid = json.loads(record.read_text())["pid"]
        assert not psutil.pid_exists(pid), f"{record.stem} (pid {pid}) still running"


def test_cli_nats_runs_until_sigterm(tmp_path: Path) -> None:
    proc = _spawn_cli(["nats", "--state-dir", str(tmp_path)], _cli_env(tmp_path))
    output = _read_until(proc, "Press Ctrl-C")
    url = next(line for line in output.splitlines() if line.startswith("export "))
    port = int(url.rsplit(":", 1)[1])
    assert port_accepts("127.0.0.1", port)
    proc.send_signal(signal.SIGTERM)
    code, _ = _finish(proc)
    assert code == 0
    assert not port_accepts("127.0.0.1", port)


async def test_cli_run_starts_and_stops_the_stack(
    tmp_path: Path, state_dir: Path, fake_bin: Path
) -> None:
    state = state_dir
    api_port = free_port()
    args = ["run", "--state-dir", str(state), "--api-port", str(api_port)]
    proc = _spawn_cli([*args, "--bin-dir", str(fake_bin)], _cli_env(tmp_path))
    banner = _read_until(proc, "Press Ctrl-C")
    login = '{"email":"admin@fractal.xy","password":"1234"}'
    assert (
        f"grpcurl -plaintext -d '{login}' 127.0.0.1:{api_port} fractal.v2.AuthService/Login"
        in banner
    )
    assert str(state / "logs" / "api.log") in banner

    api = json.loads((tmp_path / "out" / "api.json").read_text())["env"]
    runner = json.loads((tmp_path / "out" / "runner.json").read_text())["env"]
    assert api == runner
    assert api["FRACTAL_DATABASE_URL"].startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert api["FRACTAL_DATABASE_URL"].endswith("/fractal")
    assert api["FRACTAL_NATS_URL"].startswith("nats://127.0.0.1:")
    assert api["FRACTAL_API_ADDRESS"] == f"127.0.0.1:{api_port}"
    # The runner calls api's internal listener, on a port of its own.
    assert api["FRACTAL_API_URL"] == api["FRACTAL_API_INTERNAL_ADDRESS"]
    assert api["FRACTAL_API_INTERNAL_ADDRESS"].startswith("127.0.0.1:")
    assert api["FRACTAL_API_INTERNAL_ADDRESS"] != api["FRACTAL_API_ADDRESS"]
    assert api["FRACTAL_RUNNER_ADDRESS"].startswith("127.0.0.1:")
    assert api["FRACTAL_RUNNER_BACKEND"] == "local"
    assert api["FRACTAL_RUNNER_WORKING_BASE_DIR"] == str(state / "jobs")
    assert api["FRACTAL_DEFAULT_ADMIN_EMAIL"] == "admin@fractal.xy"
    assert api["FRACTAL_DEFAULT_ADMIN_PASSWORD"] == "1234"
    assert api["FRACTAL_NATS_PREFIX"] == "fractal"
    for variable in ("JWT_PRIVATE", "JWT_PUBLIC", "SERVICE_PRIVATE", "SERVICE_PUBLIC"):
        assert api[f"FRACTAL_{variable}_KEY_FILE"].startswith(str(state / "keys"))
    assert await _select_one(api["FRACTAL_DATABASE_URL"]) == 1
    api_log = (state / "logs" / "api.log").read_text()
    assert "api migrated" in api_log and "api serving" in api_log

    proc.send_signal(signal.SIGINT)
    code, output = _finish(proc)
    assert code == 0, output
    order = [
        "Stopping collector",
        "Stopping runner",
        "Stopping api",
        "Stopping NATS",
        "Stopping PostgreSQL",
    ]
    positions = [output.index(step) for step in order]
    assert positions == sorted(positions), output
    _assert_all_stopped(state, tmp_path / "out")


@pytest.mark.parametrize(
    ("failure", "expected_code", "expected_text"),
    [
        ({"FAKE_MIGRATE_FAIL": "runner"}, 7, "`runner migrate` failed with exit code 7"),
        ({"FAKE_SERVE_FAIL": "runner"}, 1, "runner exited with code 3 while starting"),
        (
            {"FAKE_CRASH": "api"},
            1,
            "api exited with code 5, after 1 restart(s) in a row that did not stay up 60s; "
            "giving up",
        ),
    ],
    ids=["migrate-fails", "serve-fails", "keeps-crashing"],
)
def test_cli_run_failure_stops_everything(
    tmp_path: Path,
    state_dir: Path,
    fake_bin: Path,
    failure: dict[str, str],
    expected_code: int,
    expected_text: str,
) -> None:
    state = state_dir
    args = ["run", "--state-dir", str(state), "--api-port", str(free_port()), "--max-restarts", "1"]
    proc = _spawn_cli([*args, "--bin-dir", str(fake_bin)], _cli_env(tmp_path, **failure))
    code, output = _finish(proc, timeout=120)
    assert code == expected_code, output
    assert expected_text in output
    assert "exploded" in output or "crashing" in output  # the child's last lines are shown
    _assert_all_stopped(state, tmp_path / "out")


def test_cli_run_restarts_a_crashed_service(
    tmp_path: Path, state_dir: Path, fake_bin: Path
) -> None:
    api_port = free_port()
    args = ["run", "--state-dir", str(state_dir), "--api-port", str(api_port)]
    env = _cli_env(tmp_path, FAKE_CRASH_ONCE="api")
    proc = _spawn_cli([*args, "--bin-dir", str(fake_bin)], env)
    first_pid = None
    try:
        # The crash comes 1 s after api serves: on a loaded machine, before the banner is out.
        output = _read_until(proc, "Press Ctrl-C")
        if "api is running again" not in output:
            output += _read_until(proc, "api is running again")
        first_pid = int((tmp_path / "out" / "api.crashed").read_text())
        assert "api exited with code 5; restarting it in 1s (restart 1 of at most 5" in output
        assert "crashing" in output  # the dead process's last lines are shown
        assert grpc_serving(f"127.0.0.1:{api_port}")
        second_pid = json.loads((tmp_path / "out" / "api.json").read_text())["pid"]
        assert second_pid != first_pid
    finally:
        proc.send_signal(signal.SIGINT)
        code, output = _finish(proc)
    assert code == 0, output
    _assert_all_stopped(state_dir, tmp_path / "out")
