"""Running the installer's commands (``fractal_grpc.collection.commands``): argument lists,
never a shell; stdout and stderr go to the collection's log as they come."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], result: Result) -> None:
        super().__init__(f"{os.path.basename(argv[0])} exited with code {result.returncode}")
        self.result = result


def command_env(uv_cache_dir: str | None) -> dict[str, str]:
    """The environment of installer commands: the collector's, without its own virtual
    environment (uv and pip would install there), with uv's shared cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if uv_cache_dir:
        env["UV_CACHE_DIR"] = uv_cache_dir
    return env


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL when the collector dies, so that an installer
    of a dead collector does not go on writing into a folder its successor rebuilds."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


async def run(
    argv: Sequence[str],
    log: Callable[[str], None],
    *,
    env: dict[str, str],
    cwd: str | None = None,
    check: bool = True,
    stdin: str | None = None,
) -> Result:
    """Run ``argv``; each output line goes to ``log`` (and into the result). A non-zero exit
    raises ``CommandFailed`` when ``check``."""
    log("$ " + shlex.join(a if len(a) <= 200 else a[:20] + "…" for a in argv) + "\n")
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdout is not None
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        await process.stdin.drain()
        process.stdin.close()
    lines: list[str] = []
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            log(line)
        returncode = await process.wait()
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    result = Result(returncode, "".join(lines))
    if check and returncode != 0:
        raise CommandFailed(argv, result)
    return result
