"""Compute part of `create_ome_zarr_compound`: create one fake 3D image."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402


def create_ome_zarr_compound_compute(*, zarr_url: str, init_args: dict) -> dict:
    """Create the image folder; its well/plate attributes come from the url."""
    zarr_url = zarr_url.rstrip("/")
    write_data_file(zarr_url, "create_ome_zarr_compound_compute", **init_args)
    plate, row, col, _image = zarr_url.split("/")[-4:]
    return {
        "image_list_updates": [
            {
                "zarr_url": zarr_url,
                "attributes": {"well": f"{row}{col}", "plate": plate},
                "types": {"3D": True},
            }
        ]
    }


if __name__ == "__main__":
    run_fractal_task(create_ome_zarr_compound_compute)
