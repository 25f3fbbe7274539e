"""Non-parallel task that unsets one attribute on every input image."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fractal_tasks_mock._cli import run_fractal_task  # noqa: E402


def dummy_unset_attribute(*, zarr_urls: list[str], zarr_dir: str, attribute: str) -> dict:
    """Return an update setting `attribute` to null (i.e. "remove it") for every image."""
    return {
        "image_list_updates": [
            {"zarr_url": url, "attributes": {attribute: None}} for url in zarr_urls
        ]
    }


if __name__ == "__main__":
    run_fractal_task(dummy_unset_attribute)
