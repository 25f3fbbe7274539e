"""Running the installer's commands (``fractal_grpc.collection.commands``): argument lists,
never a shell; stdout and stderr go to the collection's log as they come."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


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


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the collector dies (util-linux ``setpriv``,
    when the machine has it): an installer of a dead collector must not go on writing into
    a folder its successor rebuilds. (Not a ``preexec_fn``: forking a process with gRPC's
    threads and running Python in the child can crash it.)"""
    if SETPRIV is None:
        return list(argv)
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def echo(argv: Sequence[str], where: str = "") -> str:
    """The log line of a command about to run (long arguments shortened), with its host."""
    line = shlex.join(a if len(a) <= 200 else a[:20] + "…" for a in argv)
    return f"{where}$ {line}\n"


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
    log(echo(argv))
    process = await asyncio.create_subprocess_exec(
        *_with_parent_death_signal(argv),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
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
