"""The worker run on the compute node for one task call: ``python -m fractal_runner.slurm.worker
--input-file IN --output-file OUT`` (reference §7.5, ``…slurm.remote``).

The input file (cloudpickle) holds ``{"versions": {...}, "call": TaskCall}``. The worker checks
the versions first (handshake): a different ``cloudpickle`` version or worker protocol (the
format of these files, :data:`WORKER_PROTOCOL`) is a job error, a different Python version only a
warning on stderr, as in the reference. (The reference compares fractal-server versions; the
worker runs the runner's own source, put on its PYTHONPATH by the runner, so the protocol is what
can still differ.) It then runs the call with the task contract of
:mod:`fractal_runner.taskproc.calls` (args file, ``{command} --args-json … --out-json …``, stdout
and stderr in the call's log) and writes the outcome to ``OUT.tmp``, then renames it to ``OUT``:
the output file is either absent or complete.

The outcome is a dict: ``{"versions", "status", ...}`` with status ``"done"`` (``output``: the
parsed out-json, or None), ``"task_failed"`` (``message``, ``log``: the task's own failure: exit
code > 0 or an invalid command) or ``"job_failed"`` (``message``: killed by a signal, files that
cannot be written, an unreadable output, a version mismatch). The worker exits 0 whenever it
wrote the outcome; a non-zero exit means no outcome could be written.

``python -m fractal_runner.slurm.worker --versions`` prints the versions as JSON (the handshake
of the ssh backend, once per connection).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from fractal_runner.taskproc.calls import (
    JobExecutionError,
    TaskCall,
    TaskExecutionError,
    build_argv,
    read_log,
    read_task_output_file,
    resolve_command,
    task_process_failure,
    write_args_file,
)

__all__ = [
    "STRICT_VERSIONS",
    "WORKER_PROTOCOL",
    "read_worker_file",
    "run_call",
    "versions",
    "write_input_file",
    "write_worker_file",
]

#: The format of the input and output files; change it with any change of that format.
WORKER_PROTOCOL = "1"
#: The versions that must be equal on both sides (Python may differ: a warning only).
STRICT_VERSIONS = ("cloudpickle", "worker_protocol")
_FILE_MODE = 0o644


def versions() -> dict[str, str]:
    """The versions the runner and the worker must agree on."""
    return {
        "python": ".".join(str(x) for x in sys.version_info[:3]),
        "cloudpickle": cloudpickle.__version__,
        "worker_protocol": WORKER_PROTOCOL,
    }


def write_input_file(path: Path, call: TaskCall) -> None:
    """Write the worker's input for ``call`` (atomically)."""
    write_worker_file(path, {"versions": versions(), "call": call})


def write_worker_file(path: Path, data: Any) -> None:
    """cloudpickle ``data`` to ``path`` through ``path.tmp`` and a rename, so readers never see
    a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(cloudpickle.dumps(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_worker_file(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def version_problem(theirs: dict[str, str]) -> str | None:
    """A message when ``theirs`` differs from ours in a version that must match, else None."""
    ours = versions()
    diff = [k for k in STRICT_VERSIONS if theirs.get(k) != ours[k]]
    if not diff:
        return None
    details = ", ".join(f"{k} {theirs.get(k)} on the runner, {ours[k]} on the node" for k in diff)
    return f"Version mismatch between the runner and the SLURM worker: {details}."


def run_call(call: TaskCall) -> dict[str, Any]:
    """Run one task call by the task contract; the outcome dict (module docstring)."""
    paths = call.paths
    try:
        argv = build_argv(resolve_command(call.command), paths)
    except TaskExecutionError as e:
        return {"status": "task_failed", "message": e.message, "log": e.log}
    try:
        write_args_file(call)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.out_json)  # never read a stale output
        log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    except OSError as e:
        return {"status": "job_failed", "message": f"Cannot prepare the files of a task call: {e}"}
    try:
        returncode = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd)
    except OSError as e:
        return {
            "status": "job_failed",
            "message": f"Cannot start the task process `{shlex.join(argv)}`: {e}",
        }
    finally:
        os.close(log_fd)
    if returncode > 0:
        return {
            "status": "task_failed",
            "message": task_process_failure(returncode, argv, paths.log),
            "log": read_log(paths.log),
        }
    if returncode < 0:
        return {
            "status": "job_failed",
            "message": task_process_failure(returncode, argv, paths.log),
        }
    try:
        return {"status": "done", "output": read_task_output_file(paths.out_json)}
    except JobExecutionError as e:
        return {"status": "job_failed", "message": e.message}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fractal_runner.slurm.worker")
    parser.add_argument("--input-file", type=Path)
    parser.add_argument("--output-file", type=Path)
    parser.add_argument("--versions", action="store_true", help="print the versions as JSON")
    args = parser.parse_args(argv)
    if args.versions:
        print(json.dumps(versions()))
        return 0
    if args.input_file is None or args.output_file is None:
        parser.error("--input-file and --output-file are required")
    try:
        data = read_worker_file(args.input_file)
        theirs, call = data["versions"], data["call"]
    except Exception as e:  # noqa: BLE001 - any unreadable input is reported the same way
        outcome = {
            "status": "job_failed",
            "message": f"The SLURM worker cannot read its input file {args.input_file}: {e}",
        }
    else:
        if theirs.get("python") != versions()["python"]:
            print(
                f"warning: Python {theirs.get('python')} on the runner, "
                f"{versions()['python']} on the node",
                file=sys.stderr,
            )
        problem = version_problem(theirs)
        if problem is not None:
            outcome = {"status": "job_failed", "message": problem}
        else:
            outcome = run_call(call)
    write_worker_file(args.output_file, {"versions": versions(), **outcome})
    return 0


if __name__ == "__main__":
    sys.exit(main())
