"""Non-parallel task with switches to sleep, fail, or write a broken output."""

from __future__ import annotations

import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import RawOutput, run_fractal_task  # noqa: E402


def behave(
    task_name: str,
    *,
    sleep_seconds: float,
    raise_error: bool,
    invalid_output: bool,
    write_garbage: bool,
) -> dict | RawOutput | None:
    """The switches shared by `generic_task` and `generic_task_parallel`."""
    if sleep_seconds > 0:
        time.sleep(sleep_seconds)
    if raise_error:
        print(f"{task_name}: failing on purpose (raise_error=True)", file=sys.stderr)
        sys.exit(1)
    if invalid_output:
        return {"foo": 1}  # valid JSON, but not a TaskOutput
    if write_garbage:
        return RawOutput("this is {not JSON")
    return None


def generic_task(
    *,
    zarr_urls: list[str],
    zarr_dir: str,
    sleep_seconds: float = 0,
    raise_error: bool = False,
    invalid_output: bool = False,
    write_garbage: bool = False,
) -> dict | RawOutput | None:
    """Do nothing (implicit update of all inputs) unless a switch says otherwise."""
    return behave(
        "generic_task",
        sleep_seconds=sleep_seconds,
        raise_error=raise_error,
        invalid_output=invalid_output,
        write_garbage=write_garbage,
    )


if __name__ == "__main__":
    run_fractal_task(generic_task)
