"""`fractal task collect [--watch]` and `fractal task check-collection` against api and a
collector process (beside the CLI suite's stack), installing fixture wheels the test builds:
no index, no network."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import ADMIN, Cli
from e2e_stack import Stack, kill, start, start_service, wait_serving
from test_cli_e2e import new_user

from fractal.v2 import task_collection_pb2 as cpb
from fractal_cli import exits
from fractal_devstack.embedded import free_port
from fractal_grpc.client import Client, ConflictError, Credential, NotFoundError, SyncClient

sys.path.insert(0, str(Path(__file__).parents[1] / "collector"))

from wheels import good_manifest, task_package  # noqa: E402

TAG = secrets.token_hex(3)


@pytest.fixture(scope="module")
def wheels_dir(cli_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of fixture wheels, with a collector process (uv, offline) installing from it."""
    wheels = tmp_path_factory.mktemp("cli-wheels")
    state = tmp_path_factory.mktemp("cli-collector")
    address = f"127.0.0.1:{free_port()}"
    env = {
        **cli_stack.env,
        "FRACTAL_COLLECTOR_ADDRESS": address,
        "FRACTAL_TASKS_DIR": str(state / "tasks"),
        "FRACTAL_COLLECTOR_INSTALLER": "uv",
        "FRACTAL_COLLECTOR_NO_INDEX": "true",
        "FRACTAL_COLLECTOR_FIND_LINKS": str(wheels),
        "FRACTAL_COLLECTOR_LEASE_SECONDS": "3",
    }
    proc = start_service("collector", env, cli_stack.logs)
    try:
        wait_serving("collector", address, proc, cli_stack.logs)
        yield wheels
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:
            proc.kill()
            proc.wait()


def test_collect_a_local_wheel_with_watch_streams_the_log_and_registers_the_tasks(
    cli: Cli, wheels_dir: Path, tmp_path: Path
) -> None:
    user = new_user(cli)
    # A wheel that only this machine has: the CLI uploads it.
    wheel = task_package(
        tmp_path / "local", f"fractal-tasks-cli-up-{TAG}", "0.1.0", manifest=good_manifest()
    )
    watched = user("task", "collect", str(wheel), "--watch", timeout=300)
    lines = watched.stdout.splitlines()
    first = next(line for line in lines if line.startswith("collection "))
    cid = int(first.split()[1].rstrip(":"))
    assert f"collection {cid}: OK" in watched.stdout, watched.stdout
    assert lines.index(first) < lines.index(f"collection {cid}: OK")
    # The final table: state and package.
    assert f"fractal-tasks-cli-up-{TAG}" in watched.stdout
    # check-collection --json: the record with its log; every log line was streamed.
    record = user("--json", "task", "check-collection", str(cid), "--include-logs").json()
    assert int(record["id"]) == cid and record["state"] == "COLLECTION_STATE_OK"
    assert record["package_name"] == f"fractal-tasks-cli-up-{TAG}"
    assert record["package_version"] == "0.1.0"
    assert record["uploaded_wheel"] == wheel.name
    log_lines = [line for line in record["log"].splitlines() if line.strip()]
    assert log_lines, record
    for line in log_lines:
        assert line in watched.stdout, line
    # The manifest's three tasks are registered, and `task list` shows them.
    assert len(record["task_ids"]) == 3
    tasks = user("--json", "task", "list").json()
    mine = {int(t["id"]): t for t in tasks if t["source"].startswith(record["source"])}
    assert sorted(mine) == sorted(int(i) for i in record["task_ids"])
    assert {t["name"] for t in mine.values()} == {"Create Things", "Treat Image", "Compound Step"}
    # Without --include-logs: no log; table mode shows the state.
    assert "log" not in user("--json", "task", "check-collection", str(cid)).json()
    table = user("task", "check-collection", str(cid)).stdout
    assert "OK" in table and f"fractal-tasks-cli-up-{TAG}" in table


def test_collect_by_name_json_then_duplicate_and_refusals(cli: Cli, wheels_dir: Path) -> None:
    user = new_user(cli)
    name = f"fractal-tasks-cli-idx-{TAG}"
    task_package(wheels_dir, name, "0.2.0", manifest=good_manifest())
    # Without --watch: the PENDING record at once.
    pending = user("--json", "task", "collect", name, "--package-version", "0.2.0").json()
    assert pending["state"] in ("COLLECTION_STATE_PENDING", "COLLECTION_STATE_INSTALLING")
    assert pending["requested_version"] == "0.2.0"
    cid = int(pending["id"])
    # check-collection --watch --json: stdout is the final record only, the log on stderr.
    followed = user("--json", "task", "check-collection", str(cid), "--watch", timeout=300)
    final = followed.json()
    assert int(final["id"]) == cid and final["state"] == "COLLECTION_STATE_OK"
    assert final["package_version"] == "0.2.0" and len(final["task_ids"]) == 3
    logged = user("--json", "task", "check-collection", str(cid), "--include-logs").json()["log"]
    assert logged.strip() and logged.strip().splitlines()[0] in followed.stderr
    # The same package again: refused (exit 1), naming the existing collection.
    again = user("--json", "task", "collect", name, "--package-version", "0.2.0", check=1)
    error = json.loads(again.stderr)["error"]
    assert error["code"] == "ALREADY_EXISTS" and error["metadata"]["collection_id"] == str(cid)
    # Bad input: exit 2 with the field; an unknown collection: exit 3.
    bad = user("--json", "task", "collect", name, "--package-version", "not a version", check=2)
    assert "package_version" in bad.stderr
    pin = user("task", "collect", name, "--pinned-dependency", "numpy", check=exits.USAGE)
    assert "NAME=VERSION" in pin.stderr
    user("task", "check-collection", "999999999", check=exits.NOT_FOUND)


def test_collect_watch_of_a_failing_package_exits_6_with_the_error(
    cli: Cli, wheels_dir: Path
) -> None:
    user = new_user(cli)
    name = f"fractal-tasks-cli-bare-{TAG}"
    task_package(wheels_dir, name, "1.0.0", manifest=None)
    failed = user("task", "collect", name, "--watch", check=exits.JOB_FAILED, timeout=300)
    assert ": failed" in failed.stdout, failed.stdout
    assert "manifest" in failed.stderr.lower(), failed.stderr
    as_json = user(
        "--json", "task", "collect", name, "--watch", check=exits.JOB_FAILED, timeout=300
    )
    record = as_json.json()
    assert record["state"] == "COLLECTION_STATE_FAILED" and "manifest" in record["error"].lower()


def test_the_client_follows_and_manages_collections(cli_stack: Stack, wheels_dir: Path) -> None:
    """SyncClient: collect, watch (the streamed log is the whole log, once), list, deactivate,
    reactivate, delete; a custom collection."""
    name = f"fractal-tasks-cli-life-{TAG}"
    task_package(wheels_dir, name, "1.0.0", manifest=good_manifest())
    with SyncClient(cli_stack.api_address, credential=Credential(*ADMIN)) as root:
        first = root.collect_pip(name)
        messages = list(root.watch_collection(first.id))
        final = messages[-1].collection
        assert final.state == cpb.COLLECTION_STATE_OK and final.active
        versions = [m.collection.version for m in messages]
        assert versions == sorted(set(versions))
        whole = root.get_collection(first.id, with_log=True)
        assert "".join(m.new_log for m in messages) == whole.log
        listed = root.list_collections(page_size=1000)
        assert first.id in [c.id for c in listed.collections]
        # Active: it cannot be deleted.
        with pytest.raises(ConflictError):
            root.delete_collection(first.id)
        off = root.deactivate_collection(first.id)
        assert off.kind == cpb.COLLECTION_KIND_DEACTIVATE and off.target_collection_id == first.id
        assert list(root.watch_collection(off.id))[-1].collection.state == cpb.COLLECTION_STATE_OK
        assert not root.get_collection(first.id).active
        on = root.reactivate_collection(first.id)
        assert list(root.watch_collection(on.id))[-1].collection.state == cpb.COLLECTION_STATE_OK
        assert root.get_collection(first.id).active
        off = root.deactivate_collection(first.id)
        list(root.watch_collection(off.id))
        root.delete_collection(first.id)
        with pytest.raises(NotFoundError):
            root.get_collection(first.id)
        with pytest.raises(NotFoundError):
            root.get_task(final.task_ids[0])
        # A custom collection: the tasks of a manifest, owned by the caller.
        custom = root.collect_custom(
            good_manifest(), sys.executable, str(wheels_dir), f"custom-{TAG}", version="9"
        )
        assert [t.name for t in custom] == ["Create Things", "Treat Image", "Compound Step"]
        me = root.get_current_user()
        owner = me.username or me.slurm_user
        assert {t.source.rsplit(":", 1)[0] for t in custom} == {f"{owner}:custom-{TAG}"}
        assert all(t.owner == owner for t in custom)


async def test_watch_collection_goes_on_across_an_api_restart(
    cli_stack: Stack, wheels_dir: Path
) -> None:
    """api killed after the first message: the watch is reopened, no version is yielded twice,
    and the log text streamed is the collection's whole log, each part once."""
    name = f"fractal-tasks-cli-restart-{TAG}"
    task_package(wheels_dir, name, "1.0.0", manifest=good_manifest())
    async with Client(cli_stack.api_address, credential=Credential(*ADMIN)) as c:
        first = await c.collect_pip(name)
        stream = c.watch_collection(first.id)
        messages = [await anext(stream)]
        # Still running when api dies: what follows comes from a reopened watch.
        assert messages[0].collection.state in (
            cpb.COLLECTION_STATE_PENDING,
            cpb.COLLECTION_STATE_INSTALLING,
        )
        kill(cli_stack, "api", signal.SIGKILL)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(start, cli_stack, "api")
        messages += [m async for m in stream]
        whole = await c.get_collection(first.id, with_log=True)
    assert messages[-1].collection.state in (
        cpb.COLLECTION_STATE_OK,
        cpb.COLLECTION_STATE_FAILED,
    )
    versions = [m.collection.version for m in messages]
    assert versions == sorted(set(versions)), versions
    assert "".join(m.new_log for m in messages) == whole.log
