"""Task that starts a long-lived child process and then sleeps (used to test stop).

The same script serves the non-parallel (`zarr_urls`) and the parallel (`zarr_url`) entries of
the manifest. With `pid_file`, it writes `{"task_pid": ..., "child_pid": ...}` there once the
child is running; `child_new_session` puts the child in its own session/process group, so that
only a process-tree walk (not a process-group kill) can find it. With `marker_file`, the first
run creates that file and a later run (the task run again) returns at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402


def spawning_task(
    *,
    zarr_url: str | None = None,
    zarr_urls: list[str] | None = None,
    zarr_dir: str | None = None,
    sleep_seconds: float = 600,
    child_new_session: bool = False,
    pid_file: str | None = None,
    marker_file: str | None = None,
) -> None:
    if marker_file is not None:
        if os.path.exists(marker_file):
            print("spawning_task: marker found, a second run ends at once", flush=True)
            return
        open(marker_file, "w").close()
    child = subprocess.Popen(
        ["sleep", str(sleep_seconds)],
        stdin=subprocess.DEVNULL,
        start_new_session=child_new_session,
    )
    pids = {"task_pid": os.getpid(), "child_pid": child.pid}
    if zarr_url is not None:
        write_data_file(zarr_url, "spawning_task", **pids)
    if pid_file is not None:
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(pids, f)
        os.replace(tmp, pid_file)  # atomic: readers never see a partial file
    print(f"spawning_task: started child {child.pid}", flush=True)
    time.sleep(sleep_seconds)
    child.wait()


if __name__ == "__main__":
    run_fractal_task(spawning_task)
