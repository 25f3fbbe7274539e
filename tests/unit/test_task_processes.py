"""Task processes of the runner: the ledger kills what a crashed runner left running (and
nothing else); processes are awaited through pidfds."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fractal_runner.taskproc.ledger import ProcessLedger, kill_leftovers
from waiting import is_gone, wait_until

# A task-like process: leads its own session and starts a child that stays in its group.
TREE = "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"


def _start_tree() -> tuple[subprocess.Popen[bytes], int]:
    task = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    for _ in range(250):
        children = psutil.Process(task.pid).children()
        if children:
            return task, children[0].pid
        time.sleep(0.02)
    task.kill()
    raise AssertionError("the task process did not start its child")


async def test_leftover_process_groups_are_killed_and_the_file_removed(tmp_path: Path) -> None:
    ledger = ProcessLedger(tmp_path / "ledger" / "7")
    task, child = _start_tree()
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    try:
        ledger.record(task.pid)
        ledger.record(done.pid)  # gone by now: not recorded, and nothing to kill
        lines = ledger.path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].split()[:2] == [socket.gethostname(), str(task.pid)]
        killed = kill_leftovers(ledger.path)
        assert task.pid in killed and child in killed
        task.wait(timeout=5)
        await wait_until(lambda: is_gone(child), 5.0)
        assert not ledger.path.exists()
    finally:
        for pid in (task.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_reused_pids_and_other_hosts_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "3"
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = psutil.Process(bystander.pid).create_time()
        path.write_text(
            f"{socket.gethostname()} {bystander.pid} {started - 100!r}\n"  # an older process
            f"other-host {bystander.pid} {started!r}\n"  # the same pid on another machine
            "garbage line\n"
        )
        assert kill_leftovers(path) == []
        assert bystander.poll() is None
        assert not path.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_no_ledger_file_is_nothing_to_do(tmp_path: Path) -> None:
    assert kill_leftovers(tmp_path / "missing") == []
    ProcessLedger(tmp_path / "missing").discard()


PIDFD_PROBE = """
import asyncio, sys
from fractal_runner.taskproc.local_executor import use_pidfd_child_watcher

async def main():
    used = use_pidfd_child_watcher()
    results = []
    for code in (0, 3):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"raise SystemExit({code})", start_new_session=True
        )
        results.append(await process.wait())
    kind = type(asyncio.get_child_watcher()).__name__ if sys.version_info < (3, 12) else "-"
    print(used, results, kind)

asyncio.run(main())
"""


def test_task_processes_are_awaited_through_pidfds() -> None:
    """The runner waits for task processes through pidfds (no thread per process on 3.11),
    and exit codes still come through."""
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", PIDFD_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split(maxsplit=1)
    assert out[0] == "True"  # Linux >= 5.3, as on every machine this runs on
    assert out[1].startswith("[0, 3]")
    if sys.version_info < (3, 12):
        assert out[1].split()[-1] == "PidfdChildWatcher"
