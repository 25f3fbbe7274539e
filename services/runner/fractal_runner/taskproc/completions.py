"""Durable records of completed task calls: what makes resume per call instead of per task.

When a call's process exits 0 and its out-json parses, the runner writes
``{prefix}.done.json`` beside the call's other files: the parsed output and a digest of what
was called (command and arguments). The record is written atomically and durably (a temporary
file, fsync, rename, fsync of the folder), and only then does the call count as done. A run
that resumes the job (after a runner crash, a restart, or an attempt interrupted by an api
outage) takes the output of every call with a matching record and runs only the others; the
task's outputs are then merged as always, in call order.

Why files and not rows of the runner's schema: the record sits with the output it stands for,
is written by the process that saw the exit code, costs no database round trip per call (a
task may have thousands), and works while the runner's database is away; the job folder is
the job's own (never reused by another job) and is read by the runner that resumes it, as the
process ledger already is. A record whose digest does not match the call (another command or
other arguments under the same prefix) or that cannot be read is ignored: the call runs again.

A call in flight at a crash has no record: it runs once more, after the ledger
(``taskproc.ledger``) has killed what was left of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fractal_runner.taskproc.calls import TaskCall

__all__ = ["Completion", "call_digest", "load_completions", "read_completion", "record_completion"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Completion:
    """A completed call: its parsed output (None: the task wrote none)."""

    output: dict[str, Any] | None


def call_digest(call: TaskCall) -> str:
    """What identifies a call's work: its command and its arguments (canonical JSON)."""
    canonical = json.dumps(
        {"command": call.command, "args": call.args}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_completion(call: TaskCall, output: dict[str, Any] | None) -> None:
    """Write the call's completion record durably; raises OSError when it cannot."""
    path = call.paths.done
    data = json.dumps({"version": _VERSION, "digest": call_digest(call), "output": output})
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_completion(call: TaskCall) -> Completion | None:
    """The call's completion, if a valid record of this very call exists."""
    try:
        with open(call.paths.done, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("version") != _VERSION
        or record.get("digest") != call_digest(call)
    ):
        return None
    output = record.get("output")
    if output is not None and not isinstance(output, dict):
        return None
    return Completion(output)


def load_completions(calls: Sequence[TaskCall]) -> dict[int, Completion]:
    """The completions found for ``calls``, by index."""
    found: dict[int, Completion] = {}
    for index, call in enumerate(calls):
        completion = read_completion(call)
        if completion is not None:
            found[index] = completion
    return found
