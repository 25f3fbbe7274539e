"""Which task processes a job started, kept on disk, so that a crashed runner's leftovers die.

Task processes run in their own sessions (so that stop can kill their whole process group).
When a runner is killed outright (SIGKILL, OOM), they outlive it, and the runner that resumes
the job would run the interrupted task a second time beside the first — two processes writing
the same images. So every start is appended to a small per-job file (host name, pid, process
start time), and before a job is (re)started, :func:`kill_leftovers` kills the process groups
and descendants listed there that still run on this host. The start time guards against a pid
reused by an unrelated process; the host name keeps runners on other machines (sharing the
folder) out of it. On Kubernetes the runner's container takes its processes with it, and the
file's entries name another host.

A line is a single ``write`` on an ``O_APPEND`` file: complete in the page cache before the
process could be orphaned, with no fsync (after a machine crash there is nothing to kill).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import psutil

from fractal_runner.taskproc.proctree import descendants, signal_all, signal_group

__all__ = ["LEDGER_FOLDER", "ProcessLedger", "kill_leftovers"]

log = logging.getLogger(__name__)

#: Under the runner's working base dir: one ledger file per job, named by the job id.
LEDGER_FOLDER = ".task-processes"


class ProcessLedger:
    """Appends the task processes of one job to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname()

    def record(self, pid: int) -> None:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:  # already gone: nothing could be left over
            return
        line = f"{self.host} {pid} {started!r}\n".encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:  # the job runs on; only the crash clean-up loses this entry
            log.warning("cannot record task process %s in %s: %s", pid, self.path, exc)

    def discard(self) -> None:
        """The job's processes are all accounted for (it ended here): forget them."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _entries(path: Path, host: str) -> list[tuple[int, float]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != host:
            continue
        with contextlib.suppress(ValueError):
            found.append((int(parts[1]), float(parts[2])))
    return found


def kill_leftovers(path: Path) -> list[int]:
    """SIGKILL what still runs of the processes listed in ``path`` on this host (each one's
    process group and descendants), then remove the file. Returns the pids killed."""
    killed: list[int] = []
    for pid, started in _entries(path, socket.gethostname()):
        try:
            if psutil.Process(pid).create_time() != started:
                continue  # the pid now belongs to another process
        except psutil.NoSuchProcess:
            # The leader is gone; members of its group may remain (a live group keeps its
            # number from being reused, so the group is still the task's).
            pass
        except psutil.Error:
            continue
        tree = descendants([pid])
        if signal_group(pid, signal.SIGKILL):
            killed.append(pid)
        signal_all([], tree, signal.SIGKILL)
        killed += [proc.pid for proc in tree if proc.pid not in killed]
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return killed
