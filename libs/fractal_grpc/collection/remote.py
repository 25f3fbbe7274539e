"""The shell lines of a collection on a remote host (over SSH: one line, run by the login
shell): every value quoted with ``shlex`` after the strict grammars of ``packages``, and the
rules that keep the collector's removals inside the remote tasks folder."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath

#: The environment of every remote installer command: no virtual environment of the login
#: shell's, no pip version check (as the local collector's command environment).
REMOTE_ENV = ("env", "-u", "VIRTUAL_ENV", "-u", "PYTHONPATH", "PIP_DISABLE_PIP_VERSION_CHECK=1")

_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9/_.+@=-]+$")


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one remote shell line: from ``/``, in ``REMOTE_ENV``, stderr with stdout."""
    return "cd / && exec " + shlex.join([*REMOTE_ENV, *argv]) + " 2>&1"


def sh(script: str, *args: str) -> str:
    """``script`` run by ``sh -c`` with ``args`` as $1, $2, …: the values never enter the
    script's text."""
    return shlex.join(["sh", "-c", script, "sh", *args])


def inside(root: str, path: str) -> bool:
    """``path`` is strictly inside ``root`` (both absolute, neither with ``..``): the only
    folders the collector removes on a remote host."""
    p, r = PurePosixPath(path), PurePosixPath(root)
    return (
        p.is_absolute()
        and r.is_absolute()
        and ".." not in p.parts
        and ".." not in r.parts
        and p != r
        and p.is_relative_to(r)
    )


def ere_literal(path: str) -> str | None:
    """``path`` as a POSIX extended regular expression that matches it literally (for
    ``pkill -f``), and never its own text (its leading "/" is bracketed: the shell that runs
    pkill has the pattern in its command line); None for a path with other characters than
    the wheel-path grammar's."""
    if not _PLAIN_PATH.match(path) or "//" in path:
        return None
    return "[/]" + "".join(f"[{c}]" if c in ".+" else c for c in path[1:])
