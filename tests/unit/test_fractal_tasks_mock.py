"""The mock task package: a consistent manifest, and scripts that follow the task CLI contract."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "fractal_tasks_mock"
PACKAGE_DIR = PACKAGE_ROOT / "fractal_tasks_mock"
MANIFEST: dict[str, Any] = json.loads((PACKAGE_DIR / "__FRACTAL_MANIFEST__.json").read_text())
TASKS: list[dict[str, Any]] = MANIFEST["task_list"]


def _task_id(task: dict[str, Any]) -> str:
    return str(task["name"])


def _sides(task: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for side in ("non_parallel", "parallel"):
        if task.get(f"executable_{side}"):
            yield side, task[f"executable_{side}"]


def run_task(
    executable: str, args: dict[str, Any], tmp_path: Path, name: str = "call"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a mock task as Fractal would; return the finished process and the out-json path."""
    args_json = tmp_path / f"{name}.args.json"
    out_json = tmp_path / f"{name}.metadiff.json"
    args_json.write_text(json.dumps(args))
    proc = subprocess.run(
        [sys.executable, str(PACKAGE_DIR / executable), "--args-json", str(args_json)]
        + ["--out-json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,  # not the package folder: the script must find its helper by itself
    )
    return proc, out_json


def read_output(out_json: Path) -> Any:
    return json.loads(out_json.read_text()) if out_json.exists() else None


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_header() -> None:
    assert MANIFEST["manifest_version"] == "2"
    assert MANIFEST["has_args_schemas"] is True
    assert MANIFEST["args_schema_version"] == "pydantic_v2"
    names = [t["name"] for t in TASKS]
    assert len(names) == len(set(names))
    for expected in (
        "create_ome_zarr_compound",
        "illumination_correction",
        "MIP_compound",
        "dummy_insert_single_image",
        "dummy_remove_images",
        "dummy_unset_attribute",
        "generic_task",
        "generic_task_parallel",
        "spawning_task",
    ):
        assert expected in names


@pytest.mark.parametrize("task", TASKS, ids=_task_id)
def test_manifest_task_is_consistent(task: dict[str, Any]) -> None:
    allowed = {
        "name",
        "executable_non_parallel",
        "executable_parallel",
        "input_types",
        "output_types",
        "meta_non_parallel",
        "meta_parallel",
        "args_schema_non_parallel",
        "args_schema_parallel",
        "docs_info",
        "docs_link",
    }
    assert set(task) <= allowed
    assert list(_sides(task)), "a task needs at least one executable"
    for key in ("input_types", "output_types"):
        assert isinstance(task[key], dict)
        assert all(isinstance(k, str) and isinstance(v, bool) for k, v in task[key].items())
    for side in ("non_parallel", "parallel"):
        executable = task.get(f"executable_{side}")
        schema = task.get(f"args_schema_{side}")
        if executable is None:
            assert task.get(f"meta_{side}", {}) == {}
            assert schema is None
            continue
        path = PACKAGE_DIR / executable
        assert not Path(executable).is_absolute()
        assert path.is_file(), f"missing executable {executable}"
        assert schema is not None, "has_args_schemas requires a schema for every executable"
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"


@pytest.mark.parametrize(
    ("task", "side", "executable"),
    [(t, side, exe) for t in TASKS for side, exe in _sides(t)],
    ids=[f"{t['name']}-{side}" for t in TASKS for side, _ in _sides(t)],
)
def test_schema_matches_task_function(
    task: dict[str, Any], side: str, executable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every schema property is a parameter of the function, with the same default.

    Parameters missing from the schema must have a default (the one script behind both
    `spawning_task` entries accepts `zarr_url` and `zarr_urls`; each schema lists one side).
    """
    monkeypatch.syspath_prepend(str(PACKAGE_ROOT))
    stem = Path(executable).stem
    module = importlib.import_module(f"fractal_tasks_mock.{stem}")
    params = inspect.signature(getattr(module, stem)).parameters
    schema = task[f"args_schema_{side}"]
    properties = schema["properties"]

    assert set(properties) <= set(params)
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= set(properties)
    reserved = {"zarr_url"} if side == "parallel" else {"zarr_urls", "zarr_dir"}
    assert reserved <= set(properties)
    assert set(schema["required"]) == required | reserved
    for name in set(properties) - reserved:
        default = params[name].default
        if default is not inspect.Parameter.empty:
            assert properties[name]["default"] == default, name


# --- scripts ----------------------------------------------------------------------------------


def test_create_ome_zarr_compound_then_mip(tmp_path: Path) -> None:
    zarr_dir = str(tmp_path / "zarr")
    proc, out = run_task(
        "create_ome_zarr_compound_init.py",
        {"zarr_urls": [], "zarr_dir": zarr_dir, "image_dir": "/images"},
        tmp_path,
        "init",
    )
    assert proc.returncode == 0, proc.stderr
    plan = read_output(out)["parallelization_list"]
    assert [item["zarr_url"] for item in plan] == [
        f"{zarr_dir}/my_plate.zarr/A/01/0",
        f"{zarr_dir}/my_plate.zarr/A/02/0",
    ]
    assert all(item["init_args"] == {"image_dir": "/images"} for item in plan)

    proc, out = run_task("create_ome_zarr_compound_compute.py", plan[1], tmp_path, "compute")
    assert proc.returncode == 0, proc.stderr
    assert read_output(out) == {
        "image_list_updates": [
            {
                "zarr_url": f"{zarr_dir}/my_plate.zarr/A/02/0",
                "attributes": {"well": "A02", "plate": "my_plate.zarr"},
                "types": {"3D": True},
            }
        ]
    }
    assert (Path(zarr_dir) / "my_plate.zarr/A/02/0/data").is_file()

    image = f"{zarr_dir}/my_plate.zarr/A/02/0"
    proc, out = run_task(
        "MIP_compound_init.py", {"zarr_urls": [image], "zarr_dir": zarr_dir}, tmp_path, "mip_init"
    )
    assert proc.returncode == 0, proc.stderr
    mip_plan = read_output(out)["parallelization_list"]
    new_url = f"{zarr_dir}/my_plate_mip.zarr/A/02/0"
    assert mip_plan == [{"zarr_url": image, "init_args": {"new_zarr_url": new_url}}]
    proc, out = run_task("MIP_compound_compute.py", mip_plan[0], tmp_path, "mip_compute")
    assert proc.returncode == 0, proc.stderr
    assert read_output(out) == {
        "image_list_updates": [
            {"zarr_url": new_url, "origin": image, "attributes": {"plate": "my_plate_mip.zarr"}}
        ]
    }
    assert (Path(new_url) / "data").is_file()


def test_illumination_correction(tmp_path: Path) -> None:
    image = str(tmp_path / "plate.zarr/A/01/0")
    proc, out = run_task("illumination_correction.py", {"zarr_url": image}, tmp_path, "a")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()  # default overwrite_input=True: no output (implicit update)
    assert (Path(image) / "data").is_file()

    proc, out = run_task(
        "illumination_correction.py", {"zarr_url": image, "overwrite_input": False}, tmp_path, "b"
    )
    assert proc.returncode == 0, proc.stderr
    assert read_output(out) == {
        "image_list_updates": [{"zarr_url": f"{image}_corr", "origin": image}]
    }


def test_dummy_tasks(tmp_path: Path) -> None:
    zarr_dir = str(tmp_path)
    urls = [f"{zarr_dir}/a", f"{zarr_dir}/b"]
    base = {"zarr_urls": urls, "zarr_dir": zarr_dir}

    proc, out = run_task("dummy_insert_single_image.py", base, tmp_path, "insert")
    assert proc.returncode == 0, proc.stderr
    assert read_output(out) == {"image_list_updates": [{"zarr_url": f"{zarr_dir}/new_image"}]}
    proc, out = run_task(
        "dummy_insert_single_image.py", {**base, "outside_zarr_dir": True}, tmp_path, "outside"
    )
    assert read_output(out) == {"image_list_updates": [{"zarr_url": "/tmp/outside/new_image"}]}

    proc, out = run_task("dummy_remove_images.py", base, tmp_path, "remove")
    assert read_output(out) == {"image_list_removals": urls}
    proc, out = run_task(
        "dummy_remove_images.py", {**base, "more_zarr_urls": ["/x"]}, tmp_path, "remove_more"
    )
    assert read_output(out) == {"image_list_removals": ["/x"]}

    proc, out = run_task("dummy_unset_attribute.py", {**base, "attribute": "well"}, tmp_path, "u")
    assert read_output(out) == {
        "image_list_updates": [{"zarr_url": u, "attributes": {"well": None}} for u in urls]
    }


def test_generic_task_switches(tmp_path: Path) -> None:
    base = {"zarr_urls": [], "zarr_dir": str(tmp_path)}

    proc, out = run_task("generic_task.py", base, tmp_path, "ok")
    assert (proc.returncode, out.exists()) == (0, False)

    proc, out = run_task("generic_task.py", {**base, "raise_error": True}, tmp_path, "fail")
    assert proc.returncode == 1
    assert "generic_task: failing on purpose (raise_error=True)" in proc.stderr

    proc, out = run_task("generic_task.py", {**base, "invalid_output": True}, tmp_path, "inv")
    assert read_output(out) == {"foo": 1}

    proc, out = run_task("generic_task.py", {**base, "write_garbage": True}, tmp_path, "garbage")
    assert proc.returncode == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.read_text())

    image = tmp_path / "img"
    proc, out = run_task(
        "generic_task_parallel.py", {"zarr_url": str(image), "raise_error": True}, tmp_path, "par"
    )
    assert proc.returncode == 1
    record = json.loads((image / "data").read_text().splitlines()[-1])
    assert record["task"] == "generic_task_parallel" and record["start"] <= record["end"]


def test_unknown_argument_fails(tmp_path: Path) -> None:
    proc, _ = run_task("generic_task.py", {"zarr_urls": [], "zarr_dir": "/", "nope": 1}, tmp_path)
    assert proc.returncode == 1
    assert "nope" in proc.stderr
