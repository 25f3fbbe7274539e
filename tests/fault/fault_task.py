"""The parallel task of the fault suite (Fractal task contract: --args-json / --out-json).

Each call appends a ``start`` line to the invocation log, sleeps, waits at the gate when its
image is gated (until the gate file exists), writes its output and then appends a ``done``
line: a ``done`` line means the output was complete before it was written. The output adds
this task's mark to the image: attribute ``<mark>`` = ``<mark>:<image name>`` and type
``<mark>_done``. Lines are JSON objects with the event, the job id (from the job folder's
name), the mark, the zarr_url, the pid and the time; each is one ``write`` on a file opened
for appending, so concurrent calls never interleave.

Stdlib only: it is started as a plain script, many times per test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

_JOB_FOLDER = re.compile(r"_job_(\d+)_")


def record(log_file: str, event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def job_id_of(args_json: Path) -> int:
    """The job id in the name of the job folder that holds this call's files."""
    for part in reversed(args_json.absolute().parts):
        match = _JOB_FOLDER.search(part)
        if match:
            return int(match.group(1))
    raise SystemExit(f"no job folder in {args_json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--args-json", required=True, type=Path)
    parser.add_argument("--out-json", required=True, type=Path)
    ns = parser.parse_args()
    args = json.loads(ns.args_json.read_text(encoding="utf-8"))
    zarr_url: str = args["zarr_url"]
    mark: str = args["mark"]
    ids = {"job": job_id_of(ns.args_json), "mark": mark, "zarr_url": zarr_url}
    record(args["invocation_log"], "start", **ids)

    time.sleep(float(args.get("sleep_seconds", 0.5)))
    if zarr_url in args.get("gated", []):
        gate = Path(args["gate_file"])
        while not gate.exists():
            time.sleep(0.05)

    name = zarr_url.rstrip("/").rsplit("/", 1)[-1]
    output = {
        "image_list_updates": [
            {
                "zarr_url": zarr_url,
                "attributes": {mark: f"{mark}:{name}"},
                "types": {f"{mark}_done": True},
            }
        ]
    }
    tmp = ns.out_json.with_name(f".{ns.out_json.name}.tmp")
    tmp.write_text(json.dumps(output), encoding="utf-8")
    os.replace(tmp, ns.out_json)
    record(args["invocation_log"], "done", **ids)


if __name__ == "__main__":
    main()
