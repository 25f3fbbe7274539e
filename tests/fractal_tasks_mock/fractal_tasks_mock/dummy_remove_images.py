"""Non-parallel task that removes images from the image list (nothing is deleted on disk)."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task  # noqa: E402


def dummy_remove_images(
    *, zarr_urls: list[str], zarr_dir: str, more_zarr_urls: list[str] | None = None
) -> dict:
    """Remove every input image, or only the urls in `more_zarr_urls` when given."""
    removals = more_zarr_urls if more_zarr_urls is not None else zarr_urls
    return {"image_list_removals": list(removals)}


if __name__ == "__main__":
    run_fractal_task(dummy_remove_images)
