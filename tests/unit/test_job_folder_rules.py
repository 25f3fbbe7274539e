"""The job folder's name, where the runner finds and places it, its log tail and its zip."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from fractal.internal.v1 import job_execution_service_pb2 as ipb
from fractal_grpc.jobfolder import find_job_folder, job_folder_name, job_id_of
from fractal_runner.job_folders import read_log_tail, relocate, zip_folder

WHEN = datetime(2024, 1, 2, 3, 4, 5)


def test_job_folder_name_is_the_reference_one() -> None:
    assert (
        job_folder_name(1, 2, 3, WHEN) == "proj_v2_0000001_wf_0000002_job_0000003_20240102_030405"
    )


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("proj_v2_0000001_wf_0000002_job_0000003_20240102_030405", 3),
        ("proj_v2_0000001_wf_0000002_job_12345678_20240102_030405", 12345678),
        ("proj_v2_0000001_wf_0000002_job_0000003_20240102", None),
        ("proj_v2_0000001_wf_0000002_job_0000003_20240102_030405x", None),
        ("../proj_v2_0000001_wf_0000002_job_0000003_20240102_030405", None),
        ("ledger", None),
    ],
)
def test_job_id_of(name: str, job_id: int | None) -> None:
    assert job_id_of(name) == job_id


def test_find_job_folder_matches_the_id_exactly(tmp_path: Path) -> None:
    (tmp_path / job_folder_name(1, 2, 30, WHEN)).mkdir()
    (tmp_path / job_folder_name(1, 2, 3, WHEN)).write_text("a file, not a folder")
    assert find_job_folder(tmp_path, 3) is None
    assert find_job_folder(tmp_path, 30) == tmp_path / job_folder_name(1, 2, 30, WHEN)
    elsewhere = tmp_path.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (tmp_path / job_folder_name(1, 2, 4, WHEN)).symlink_to(elsewhere)
    assert find_job_folder(tmp_path, 4) is None  # never followed out of the base
    assert find_job_folder(tmp_path / "missing", 3) is None


@pytest.mark.parametrize(
    ("working_dir", "user_dir", "want_dir", "want_user"),
    [
        ("/api/side/{name}", "/api/side/{name}", "{base}/{name}", "{base}/{name}"),
        ("/api/side/{name}", "/cache/{name}", "{base}/{name}", "/cache/{name}"),
        ("/api/side/not_a_job_folder", "", "/api/side/not_a_job_folder", ""),
        ("", "", "", ""),
    ],
)
def test_relocate_places_the_folder_in_the_runners_base(
    tmp_path: Path, working_dir: str, user_dir: str, want_dir: str, want_user: str
) -> None:
    name = job_folder_name(1, 2, 3, WHEN)
    spec = ipb.JobSpec(
        job_id=3,
        working_dir=working_dir.format(name=name),
        working_dir_user=user_dir.format(name=name),
    )
    relocate(spec, tmp_path)
    assert spec.working_dir == want_dir.format(base=tmp_path, name=name)
    assert spec.working_dir_user == want_user.format(base=tmp_path, name=name)


def test_relocate_ignores_another_jobs_name(tmp_path: Path) -> None:
    spec = ipb.JobSpec(job_id=4, working_dir=f"/x/{job_folder_name(1, 2, 3, WHEN)}")
    relocate(spec, tmp_path)
    assert spec.working_dir == f"/x/{job_folder_name(1, 2, 3, WHEN)}"


@pytest.mark.parametrize(
    ("content", "max_bytes", "text", "truncated"),
    [
        (b"hello\n", 100, "hello\n", False),
        (b"hello\n", 6, "hello\n", False),
        (b"hello\n", 3, "lo\n", True),
        (b"", 10, "", False),
        (b"\xff\xfeok", 10, "\ufffd\ufffdok", False),
    ],
)
def test_read_log_tail(
    tmp_path: Path, content: bytes, max_bytes: int, text: str, truncated: bool
) -> None:
    (tmp_path / "workflow.log").write_bytes(content)
    assert read_log_tail(tmp_path / "workflow.log", max_bytes) == (text, truncated)


def test_zip_holds_every_file_and_subfolder(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    (folder / "0_task" / "deep" / "deeper").mkdir(parents=True)
    (folder / "empty").mkdir()
    (folder / "workflow.log").write_text("log")
    (folder / "0_task" / "0.args.json").write_text("{}")
    (folder / "0_task" / "deep" / "deeper" / "blob").write_bytes(bytes(range(256)))
    (folder / "link").symlink_to(tmp_path)  # not followed
    out = io.BytesIO()
    zip_folder(folder, out)
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        entries = {
            i.filename: (None if i.is_dir() else archive.read(i)) for i in archive.infolist()
        }
    assert entries == {
        "0_task/": None,
        "0_task/0.args.json": b"{}",
        "0_task/deep/": None,
        "0_task/deep/deeper/": None,
        "0_task/deep/deeper/blob": bytes(range(256)),
        "empty/": None,
        "workflow.log": b"log",
    }
