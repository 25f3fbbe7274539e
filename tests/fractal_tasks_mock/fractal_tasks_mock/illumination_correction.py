"""Parallel task `illumination_correction` (input illumination_correction=false -> true)."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402


def illumination_correction(*, zarr_url: str, overwrite_input: bool = True) -> dict | None:
    """Correct one image in place (no output: implicit update) or into `{zarr_url}_corr`."""
    if overwrite_input:
        write_data_file(zarr_url, "illumination_correction")
        return None
    new_zarr_url = f"{zarr_url.rstrip('/')}_corr"
    write_data_file(new_zarr_url, "illumination_correction", origin=zarr_url)
    return {"image_list_updates": [{"zarr_url": new_zarr_url, "origin": zarr_url}]}


if __name__ == "__main__":
    run_fractal_task(illumination_correction)
