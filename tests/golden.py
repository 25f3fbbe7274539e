"""The expected end state of the reference's golden scenario (§11, ``test_fractal_demos_01``):
create_ome_zarr_compound → illumination_correction(overwrite_input) → MIP_compound, on an empty
dataset. Asserted by the service tier (in-process runner) and the end-to-end tier (processes)."""

from __future__ import annotations

from typing import Any

GOLDEN_TYPE_FILTERS = {"illumination_correction": True, "3D": False}


def golden_images(zarr_dir: str) -> dict[str, dict[str, Any]]:
    plate = f"{zarr_dir}/my_plate.zarr"
    mip = f"{zarr_dir}/my_plate_mip.zarr"
    images: dict[str, dict[str, Any]] = {}
    for well in ("01", "02"):
        images[f"{plate}/A/{well}/0"] = {
            "origin": None,
            "attributes": {"well": f"A{well}", "plate": "my_plate.zarr"},
            "types": {"3D": True, "illumination_correction": True},
        }
    for well in ("01", "02"):
        images[f"{mip}/A/{well}/0"] = {
            "origin": f"{plate}/A/{well}/0",
            "attributes": {"well": f"A{well}", "plate": "my_plate_mip.zarr"},
            "types": {"3D": False, "illumination_correction": True},
        }
    return images
