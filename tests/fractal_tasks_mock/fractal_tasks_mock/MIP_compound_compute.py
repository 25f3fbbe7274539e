"""Compute part of `MIP_compound`: create the projected (2D) image."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402


def MIP_compound_compute(*, zarr_url: str, init_args: dict) -> dict:
    """Create `init_args["new_zarr_url"]`, whose origin is the 3D input image."""
    new_zarr_url = init_args["new_zarr_url"].rstrip("/")
    write_data_file(new_zarr_url, "MIP_compound_compute", origin=zarr_url)
    plate = next((p for p in new_zarr_url.split("/") if p.endswith(".zarr")), None)
    update: dict = {"zarr_url": new_zarr_url, "origin": zarr_url}
    if plate is not None:
        update["attributes"] = {"plate": plate}
    return {"image_list_updates": [update]}


if __name__ == "__main__":
    run_fractal_task(MIP_compound_compute)
