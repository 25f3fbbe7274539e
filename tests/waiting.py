"""Test helpers for things that happen in other processes: wait for a condition, tell whether
a process is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil


def is_gone(pid: int) -> bool:
    """Dead or a zombie (an orphan's zombie waits for PID 1, which may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, poll: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(poll)


async def wait_until_async(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    await wait_until(path.exists, timeout)
