"""The task-process ledger: what a crashed runner left running is killed, nothing else."""

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

# A task-like process: leads its own session and starts a child that stays in its group.
TREE = "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False


def _start_tree() -> tuple[subprocess.Popen[bytes], int]:
    task = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    for _ in range(250):
        children = psutil.Process(task.pid).children()
        if children:
            return task, children[0].pid
        time.sleep(0.02)
    task.kill()
    raise AssertionError("the task process did not start its child")


def test_leftover_process_groups_are_killed_and_the_file_removed(tmp_path: Path) -> None:
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
        assert _wait_gone([child])
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
