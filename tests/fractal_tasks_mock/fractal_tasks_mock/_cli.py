"""Shared command-line glue for the mock tasks (stdlib only, cheap to import).

A task script defines a plain function and ends with::

    if __name__ == "__main__":
        run_fractal_task(task_function)

``run_fractal_task`` parses ``--args-json PATH --out-json PATH``, calls the function with the
keyword arguments read from the args file and, when the function returns something other than
None, writes it as JSON to the out file. Returning a :class:`RawOutput` writes its text verbatim
(used to simulate tasks that produce a broken output file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["RawOutput", "run_fractal_task", "write_data_file"]


class RawOutput:
    """A task return value that is written to the out file as-is, without JSON encoding."""

    def __init__(self, text: str) -> None:
        self.text = text


def write_data_file(zarr_url: str, task_name: str, **extra: Any) -> None:
    """Create the fake zarr folder if needed and append one JSON line to its ``data`` file."""
    os.makedirs(zarr_url, exist_ok=True)
    record = {"task": task_name, "pid": os.getpid(), "time": time.time(), **extra}
    with open(os.path.join(zarr_url, "data"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def run_fractal_task(task_function: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=task_function.__doc__)
    parser.add_argument("--args-json", required=True, help="JSON file with the task kwargs")
    parser.add_argument("--out-json", required=True, help="where to write the task output")
    ns = parser.parse_args(argv)

    with open(ns.args_json, encoding="utf-8") as f:
        kwargs = json.load(f)
    if not isinstance(kwargs, dict):
        sys.exit(f"{ns.args_json} must contain a JSON object, got {type(kwargs).__name__}")

    output = task_function(**kwargs)

    if output is None:
        return
    with open(ns.out_json, "w", encoding="utf-8") as f:
        if isinstance(output, RawOutput):
            f.write(output.text)
        else:
            json.dump(output, f, indent=2)
