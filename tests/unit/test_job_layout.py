"""Names and folders of a job's working directory (reference §5.1, §5.2, §5.9)."""

from __future__ import annotations

import stat
from datetime import datetime
from pathlib import Path

import pytest

from fractal_grpc.jobfolder import job_folder_name
from fractal_runner.taskproc.layout import (
    CallPaths,
    create_job_folders,
    parallel_prefix,
    single_prefix,
    task_slug,
    task_subfolder,
)


def test_job_folder_name() -> None:
    when = datetime(2024, 3, 7, 9, 5, 1)
    assert (
        job_folder_name(1, 22, 333, when)
        == "proj_v2_0000001_wf_0000022_job_0000333_20240307_090501"
    )
    assert job_folder_name(12345678, 0, 7, when).startswith(
        "proj_v2_12345678_wf_0000000_job_0000007_"
    )


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("create_ome_zarr_compound", "create_ome_zarr_compound"),
        ("Create OME-Zarr Structure", "create_ome_zarr_structure"),
        ("Project Image (HCS Plate)", "project_image__hcs_plate_"),
        ("MIP compound", "mip_compound"),
        ("two  spaces", "two__spaces"),
        ("tab\tnew\nline", "tab_new_line"),
        ("a.b/c:d@e", "a_b_c_d_e"),
        ("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "_" * 32),
        ("Zellkern Ä 3D", "zellkern ä 3d".replace(" ", "_")),
        ("v1.2.3", "v1_2_3"),
    ],
)
def test_task_slug(name: str, slug: str) -> None:
    assert task_slug(name) == slug


def test_prefixes_and_subfolder() -> None:
    assert task_subfolder(3, "Illumination Correction") == "3_illumination_correction"
    assert task_subfolder(2, "Project Image (HCS Plate)") == "2_project_image__hcs_plate_"
    assert single_prefix(0) == "0"
    assert parallel_prefix(2, 0) == "2_par_0000000"
    assert parallel_prefix(12, 1234) == "12_par_0001234"


def test_call_paths(tmp_path: Path) -> None:
    paths = CallPaths.build(tmp_path, "1_mip_compound", parallel_prefix(1, 5))
    folder = tmp_path / "1_mip_compound"
    assert paths == CallPaths(
        args_json=folder / "1_par_0000005.args.json",
        out_json=folder / "1_par_0000005.metadiff.json",
        log=folder / "1_par_0000005.log",
        done=folder / "1_par_0000005.done.json",
    )
    single = CallPaths.build(tmp_path, "0_x", single_prefix(0))
    assert (single.args_json.name, single.out_json.name, single.log.name) == (
        "0.args.json",
        "0.metadiff.json",
        "0.log",
    )


def test_create_job_folders(tmp_path: Path) -> None:
    job_dir = tmp_path / "base" / job_folder_name(1, 2, 3, datetime(2024, 1, 1))
    subfolders = create_job_folders(job_dir, [(1, "MIP compound"), (2, "generic_task")])

    assert subfolders == {1: job_dir / "1_mip_compound", 2: job_dir / "2_generic_task"}
    assert sorted(p.name for p in job_dir.iterdir()) == ["1_mip_compound", "2_generic_task"]
    for folder in (job_dir, *subfolders.values()):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755

    with pytest.raises(FileExistsError):
        create_job_folders(job_dir, [])
