"""Signalling task process trees: each task process leads its own process group
(``start_new_session``), so ``killpg`` reaches the children that stayed in the group, even after
the leader died; descendants found by walking the process table cover the children that moved
to another group or session."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence

import psutil

__all__ = ["descendants", "signal_all", "signal_group"]


def descendants(pids: Sequence[int]) -> list[psutil.Process]:
    """Every live descendant of `pids`, from one snapshot of the process table."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    found: list[psutil.Process] = []
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), ()):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child))
            stack.append(child)
    return found


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False when there is no such group (or it is not ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_all(
    groups: Sequence[int], descendants: Sequence[psutil.Process], sig: signal.Signals
) -> None:
    for pgid in groups:
        signal_group(pgid, sig)
    for proc in descendants:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the pid was not reused
