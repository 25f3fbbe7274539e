"""Init part of `MIP_compound`: map every 3D image to a projected image in a new plate."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task  # noqa: E402


def _projected_url(zarr_url: str, suffix: str) -> str:
    """Replace the plate component `X.zarr` of the url by `X_{suffix}.zarr`."""
    parts = zarr_url.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if part.endswith(".zarr"):
            parts[i] = f"{part[: -len('.zarr')]}_{suffix}.zarr"
            return "/".join(parts)
    return f"{zarr_url.rstrip('/')}_{suffix}"


def MIP_compound_init(*, zarr_urls: list[str], zarr_dir: str, suffix: str = "mip") -> dict:
    """Plan one projection per input image, into `my_plate_{suffix}.zarr`."""
    return {
        "parallelization_list": [
            {"zarr_url": url, "init_args": {"new_zarr_url": _projected_url(url, suffix)}}
            for url in zarr_urls
        ]
    }


if __name__ == "__main__":
    run_fractal_task(MIP_compound_init)
