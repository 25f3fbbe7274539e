"""Where a collection's steps run: this machine (``LocalHost``), or the cluster's login node over
SSH (``SshHost``, the ``slurm_ssh`` deployments, reference §8.3). The steps of ``collect`` are
the same for both; a host runs installer commands, makes and removes the environment folder
(marked as the collection's, removed only when the mark says so), and reads and writes files.

Over SSH every command line is built with ``shlex`` from values that already passed the
strict grammars of ``fractal_grpc.collection.packages``; a folder is removed only under the
configured remote tasks folder. The shared reconnecting connection (``fractal_grpc.ssh``) runs
each command on its own channel; commands that change nothing are retried on a new connection
when the connection breaks, the others fail the step (``HostLost``) — their effect is unknown,
and the collection's folder is removed as on any failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Protocol

from fractal_collector import environment, installer
from fractal_grpc.collection import commands, remote
from fractal_grpc.ssh import SshConnection, SshConnectionLost

log = logging.getLogger("fractal.collector")

#: How often a command that changes nothing is tried when the SSH connection breaks.
READ_ATTEMPTS = 3


class HostLost(Exception):
    """The remote host could not be reached, or the connection broke during a step."""


class HostFileError(Exception):
    """A file could not be read or written on the host; the message says which and why."""


class Host(Protocol):
    #: How the host is named in the collection's log ("" for this machine).
    label: str
    #: Another machine than the collector's (files of this machine must be copied there).
    remote: bool

    async def run(
        self,
        argv: Sequence[str],
        log: Callable[[str], None],
        *,
        stdin: str | None = None,
        check: bool = True,
    ) -> installer.Result: ...

    async def installer(
        self, configured: commands.Installer, log: Callable[[str], None]
    ) -> commands.Installer: ...

    async def create_folder(self, folder: str, marker_id: int) -> None: ...

    async def remove_folder(self, folder: str | None, marker_id: int) -> bool: ...

    async def stop_leftovers(self, folder: str | None) -> None: ...

    async def exists(self, path: str) -> bool: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def read_text(self, path: str) -> str: ...

    async def missing_files(self, paths: Sequence[str]) -> list[str]: ...

    def temp_dir(self) -> contextlib.AbstractAsyncContextManager[str]: ...


class LocalHost:
    """This machine: installer commands as argument lists (``installer.run``), folders through
    ``environment``."""

    label = ""
    remote = False

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def run(
        self,
        argv: Sequence[str],
        log: Callable[[str], None],
        *,
        stdin: str | None = None,
        check: bool = True,
    ) -> installer.Result:
        return await installer.run(argv, log, env=self.env, stdin=stdin, check=check)

    async def installer(
        self, configured: commands.Installer, log: Callable[[str], None]
    ) -> commands.Installer:
        return configured

    async def create_folder(self, folder: str, marker_id: int) -> None:
        await asyncio.to_thread(environment.create, Path(folder), marker_id)

    async def remove_folder(self, folder: str | None, marker_id: int) -> bool:
        return await environment.remove(Path(folder) if folder else None, marker_id)

    async def stop_leftovers(self, folder: str | None) -> None:
        """Nothing to do: a dead collector's installers got SIGKILL with it (``installer``)."""

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(Path(path).exists)

    async def write_file(self, path: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(Path(path).write_bytes, data)
        except OSError as exc:
            raise HostFileError(f"cannot write {path}: {exc.strerror or exc}") from None

    async def read_text(self, path: str) -> str:
        try:
            return await asyncio.to_thread(Path(path).read_text)
        except (OSError, UnicodeDecodeError) as exc:
            raise HostFileError(f"cannot read {path}: {exc}") from None

    async def missing_files(self, paths: Sequence[str]) -> list[str]:
        return [p for p in paths if not await asyncio.to_thread(Path(p).is_file)]

    @contextlib.asynccontextmanager
    async def temp_dir(self) -> AsyncIterator[str]:
        with tempfile.TemporaryDirectory(prefix="fractal-resolve-") as path:
            yield path


#: Creates the folder $1 marked as collection $2's; a leftover of an earlier attempt of the
#: same collection is removed first; exit 3 when it exists and is not that collection's.
_CREATE = f"""\
set -e
f=$1 m=$1/{environment.MARKER}
if [ -e "$f" ]; then
  if [ -f "$m" ] && [ "$(cat "$m")" = "$2" ]; then rm -rf -- "$f"; else exit 3; fi
fi
mkdir -p -- "$(dirname -- "$f")"
mkdir -- "$f"
printf '%s\\n' "$2" >"$m"
"""

#: Removes the folder $1 if its mark says collection $2; prints "removed", "absent" or "other".
_REMOVE = f"""\
f=$1 m=$1/{environment.MARKER}
if [ ! -e "$f" ]; then echo absent; exit 0; fi
if [ -f "$m" ] && [ "$(cat "$m")" = "$2" ]; then
  rm -rf -- "$f"
  if [ -e "$f" ]; then echo left; else echo removed; fi
else
  echo other
fi
"""


class SshHost:
    """The login node, as the one service user, over the shared connection."""

    remote = True

    def __init__(
        self, connection: SshConnection, *, tasks_dir: str, command_seconds: float
    ) -> None:
        self.connection = connection
        #: The remote tasks folder: nothing outside it is ever removed.
        self.tasks_dir = tasks_dir
        self.command_seconds = command_seconds
        t = connection.target
        self.label = f"{t.user}@{t.host}"

    async def _exec(
        self, command: str, *, stdin: bytes | None = None, seconds: float = 60.0, reads: bool
    ) -> tuple[int, bytes, bytes]:
        """``command`` on the host; retried on a new connection only when it ``reads``."""
        attempts = READ_ATTEMPTS if reads else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self.connection.exec(command, stdin=stdin, seconds=seconds)
            except SshConnectionLost as exc:
                if attempt == attempts:
                    raise HostLost(f"SSH to {self.label}: {exc}") from None
                log.warning("SSH to %s lost (%s); trying again", self.label, exc)
                await asyncio.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    async def run(
        self,
        argv: Sequence[str],
        log: Callable[[str], None],
        *,
        stdin: str | None = None,
        check: bool = True,
    ) -> installer.Result:
        log(installer.echo(argv, self.label))
        status, out, _ = await self._exec(
            remote.command_line(argv),
            stdin=stdin.encode() if stdin is not None else None,
            seconds=self.command_seconds,
            reads=False,
        )
        output = out.decode(errors="replace")
        for line in output.splitlines(keepends=True):
            log(line)
        result = installer.Result(status, output)
        if check and status != 0:
            raise installer.CommandFailed(argv, result)
        return result

    async def installer(
        self, configured: commands.Installer, log: Callable[[str], None]
    ) -> commands.Installer:
        """uv when the configured installer is uv and the host has it, else venv and pip."""
        if configured.kind != "uv":
            return configured
        status, out, _ = await self._exec(
            "command -v " + shlex.quote(configured.uv), reads=True, seconds=30
        )
        found = out.decode(errors="replace").strip()
        if status == 0 and found.startswith("/"):
            return replace(configured, uv=found)
        log(f"uv ({configured.uv}) is not on {self.label}: environments made with venv and pip.")
        return replace(configured, kind="pip")

    def _check_folder(self, folder: str) -> None:
        if not remote.inside(self.tasks_dir, folder):
            raise HostFileError(f"{folder} is not inside the remote tasks folder {self.tasks_dir}")

    async def create_folder(self, folder: str, marker_id: int) -> None:
        self._check_folder(folder)
        status, out, err = await self._exec(
            remote.sh(_CREATE, folder, str(marker_id)), reads=False, seconds=120
        )
        if status == 3:
            raise environment.FolderExists(
                f"the environment folder {folder} already exists on {self.label}"
            )
        if status != 0:
            raise HostFileError(
                f"cannot create {folder} on {self.label}: {err.decode(errors='replace').strip()}"
            )

    async def remove_folder(self, folder: str | None, marker_id: int) -> bool:
        if folder is None or not remote.inside(self.tasks_dir, folder):
            return False
        try:
            _, out, _ = await self._exec(
                remote.sh(_REMOVE, folder, str(marker_id)), reads=True, seconds=300
            )
        except HostLost as exc:
            log.warning("cannot remove %s on %s: %s", folder, self.label, exc)
            return False
        return out.decode(errors="replace").strip() == "removed"

    async def stop_leftovers(self, folder: str | None) -> None:
        """Kill the service user's processes still working in ``folder``'s environment (an
        installer of a collector that died: nothing tells a remote process its SSH client is
        gone). Only a folder inside the tasks folder, whose environment no task can be using
        yet (it is being made again)."""
        if folder is None or not remote.inside(self.tasks_dir, folder):
            return
        pattern = remote.ere_literal(str(PurePosixPath(folder) / "venv"))
        if pattern is None:
            return
        with contextlib.suppress(HostLost):
            await self._exec(
                remote.sh('pkill -KILL -u "$(id -u)" -f -- "$1" || true', pattern), reads=True
            )

    async def exists(self, path: str) -> bool:
        status, _, _ = await self._exec(shlex.join(["test", "-e", path]), reads=True)
        return status == 0

    async def write_file(self, path: str, data: bytes) -> None:
        status, _, err = await self._exec(
            remote.sh('umask 022 && cat >"$1"', path), stdin=data, reads=False, seconds=300
        )
        if status != 0:
            raise HostFileError(
                f"cannot write {path} on {self.label}: {err.decode(errors='replace').strip()}"
            )

    async def read_text(self, path: str) -> str:
        status, out, err = await self._exec(shlex.join(["cat", "--", path]), reads=True)
        if status != 0:
            raise HostFileError(
                f"cannot read {path} on {self.label}: {err.decode(errors='replace').strip()}"
            )
        try:
            return out.decode()
        except UnicodeDecodeError as exc:
            raise HostFileError(f"cannot read {path} on {self.label}: {exc}") from None

    async def missing_files(self, paths: Sequence[str]) -> list[str]:
        if not paths:
            return []
        script = 'for p in "$@"; do [ -f "$p" ] || printf "%s\\n" "$p"; done'
        _, out, _ = await self._exec(remote.sh(script, *paths), reads=True)
        return out.decode(errors="replace").splitlines()

    @contextlib.asynccontextmanager
    async def temp_dir(self) -> AsyncIterator[str]:
        status, out, err = await self._exec("mktemp -d -t fractal-resolve-XXXXXXXX", reads=False)
        path = out.decode(errors="replace").strip()
        if status != 0 or not path.startswith("/"):
            raise HostFileError(
                f"cannot make a temporary folder on {self.label}: "
                + err.decode(errors="replace").strip()
            )
        try:
            yield path
        finally:
            with contextlib.suppress(HostLost):
                await self._exec(shlex.join(["rm", "-rf", "--", path]), reads=True)
