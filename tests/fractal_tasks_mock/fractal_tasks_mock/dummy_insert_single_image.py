"""Non-parallel task that adds one new image to the image list."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task, write_data_file  # noqa: E402

OUTSIDE_ZARR_URL = "/tmp/outside/new_image"


def dummy_insert_single_image(
    *,
    zarr_urls: list[str],
    zarr_dir: str,
    outside_zarr_dir: bool = False,
    attributes: dict | None = None,
    types: dict | None = None,
    trailing_slash: bool = False,
) -> dict:
    """Insert `{zarr_dir}/new_image` (or, with outside_zarr_dir, /tmp/outside/new_image).

    The outside url is only reported, never created, so that the test suite does not write
    into a shared /tmp folder; the runner must reject it anyway.
    """
    if outside_zarr_dir:
        new_zarr_url = OUTSIDE_ZARR_URL
    else:
        new_zarr_url = f"{zarr_dir.rstrip('/')}/new_image"
        write_data_file(new_zarr_url, "dummy_insert_single_image")
    update: dict = {"zarr_url": new_zarr_url + ("/" if trailing_slash else "")}
    if attributes is not None:
        update["attributes"] = attributes
    if types is not None:
        update["types"] = types
    return {"image_list_updates": [update]}


if __name__ == "__main__":
    run_fractal_task(dummy_insert_single_image)
