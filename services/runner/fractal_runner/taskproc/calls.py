"""One task call: what runs, with which arguments, and how its outcome is read (reference §5.4).

A call is the process `{command} --args-json {args_json} --out-json {out_json}` with stdout and
stderr both in `{log}`. The task may write `out_json`; a missing file or `{}` means "no output".
The runner validates the parsed dict against TaskOutput / InitTaskOutput itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fractal_runner.taskproc.layout import CallPaths

__all__ = [
    "JobExecutionError",
    "JobStopped",
    "TaskCall",
    "TaskExecutionError",
    "build_argv",
    "read_log",
    "read_task_output_file",
    "resolve_command",
    "task_process_failure",
    "write_args_file",
]

#: Logs larger than this are cut (keeping the head and the tail) when carried in an error.
MAX_LOG_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class TaskCall:
    """`command` is a shell-like string (split with shlex, never run through a shell)."""

    command: str
    args: dict[str, Any]
    paths: CallPaths


class TaskExecutionError(RuntimeError):
    """The task itself failed (exit code > 0, or its command is not valid).

    `log` is the content of the call's log file (the task's stdout and stderr), which the runner
    reports as the job log's TRACEBACK. A task that failed without a word gets `message` there
    instead (which says how it ended: its exit code), not an empty TRACEBACK.
    """

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = log if log.strip() else message


class JobExecutionError(RuntimeError):
    """The execution machinery failed: the process was killed by a signal, could not be started,
    or left an unreadable output file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobStopped(JobExecutionError):
    """The job was stopped on request (`LocalExecutor.cancel`)."""

    def __init__(self, message: str = "Job stopped by user request.") -> None:
        super().__init__(message)


def resolve_command(command: str) -> list[str]:
    """Split `command` and check its first token, as the reference does before each call.

    Raises TaskExecutionError "Command ... is not valid" when the command is empty, cannot be
    split, or its executable is neither on PATH nor an executable file.
    """
    try:
        tokens = shlex.split(command)
    except ValueError as e:
        tokens, reason = [], f"cannot be parsed ({e})"
    else:
        reason = "is empty" if not tokens else "executable not found"
    if tokens and shutil.which(tokens[0]) is not None:
        return tokens
    shown = command if len(command) <= 200 else command[:199] + "…"
    message = (
        f'Command "{shown}" is not valid: {reason}. '
        "Hint: make sure that it is executable and on the PATH, or an absolute path."
    )
    raise TaskExecutionError(message, log=message)


def build_argv(command_tokens: list[str], paths: CallPaths) -> list[str]:
    return [
        *command_tokens,
        "--args-json",
        os.fspath(paths.args_json),
        "--out-json",
        os.fspath(paths.out_json),
    ]


def write_args_file(call: TaskCall) -> None:
    """Write the call's keyword arguments, exactly `call.args`, as a JSON object."""
    with open(call.paths.args_json, "w", encoding="utf-8") as f:
        json.dump(call.args, f, indent=2)


def read_log(path: Path) -> str:
    """The log file's text ("" if missing); a log over MAX_LOG_BYTES keeps its head and tail."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= MAX_LOG_BYTES:
                data = f.read()
            else:
                half = MAX_LOG_BYTES // 2
                head = f.read(half)
                f.seek(size - half)
                skipped = size - 2 * half
                data = head + f"\n[... {skipped} bytes of log skipped ...]\n".encode() + f.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")


def read_task_output_file(path: Path) -> dict[str, Any] | None:
    """Parse a task's out-json file.

    A missing file or `{}` → None. Anything that is not a JSON object → JobExecutionError
    "Validation of task output failed: ...".
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        output = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise JobExecutionError(
            f"Validation of task output failed: {path} is not valid JSON ({e})."
        ) from e
    if not isinstance(output, dict):
        raise JobExecutionError(
            f"Validation of task output failed: {path} must hold a JSON object, "
            f"not {type(output).__name__}."
        )
    return output or None


def task_process_failure(returncode: int, argv: Sequence[str], log: Path) -> str:
    """The one wording of a task process that ended with ``returncode`` != 0, used by the local
    executor and by the SLURM worker alike: its exit code (> 0, the task's failure) or the
    signal that killed it (< 0), then its command and log file."""
    where = f"Command: {shlex.join(argv)}\nLog file: {log}"
    if returncode > 0:
        return f"Task process exited with code {returncode}.\n{where}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"Task process was terminated by signal {name} (return code {returncode}).\n{where}"
