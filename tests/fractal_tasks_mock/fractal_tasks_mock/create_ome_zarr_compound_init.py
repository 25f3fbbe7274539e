"""Init part of `create_ome_zarr_compound`: plan one image per well of a fake plate."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402


def create_ome_zarr_compound_init(
    *,
    zarr_urls: list[str],
    zarr_dir: str,
    image_dir: str,
    num_images: int = 2,
) -> dict:
    """Create `{zarr_dir}/my_plate.zarr` and list its images `A/01/0`, `A/02/0`, ..."""
    plate_url = f"{zarr_dir.rstrip('/')}/my_plate.zarr"
    write_data_file(plate_url, "create_ome_zarr_compound_init", image_dir=image_dir)
    return {
        "parallelization_list": [
            {"zarr_url": f"{plate_url}/A/{i + 1:02d}/0", "init_args": {"image_dir": image_dir}}
            for i in range(num_images)
        ]
    }


if __name__ == "__main__":
    run_fractal_task(create_ome_zarr_compound_init)
