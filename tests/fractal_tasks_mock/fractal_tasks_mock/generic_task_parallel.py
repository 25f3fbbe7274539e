"""Parallel version of `generic_task`; records its start/end times in `{zarr_url}/data`."""

from __future__ import annotations

import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import RawOutput, run_fractal_task, write_data_file  # noqa: E402
from fractal_tasks_mock.generic_task import behave  # noqa: E402


def generic_task_parallel(
    *,
    zarr_url: str,
    sleep_seconds: float = 0,
    raise_error: bool = False,
    invalid_output: bool = False,
    write_garbage: bool = False,
) -> dict | RawOutput | None:
    """Do nothing (implicit update) unless a switch says otherwise."""
    start = time.time()
    try:
        return behave(
            "generic_task_parallel",
            sleep_seconds=sleep_seconds,
            raise_error=raise_error,
            invalid_output=invalid_output,
            write_garbage=write_garbage,
        )
    finally:
        write_data_file(zarr_url, "generic_task_parallel", start=start, end=time.time())


if __name__ == "__main__":
    run_fractal_task(generic_task_parallel)
