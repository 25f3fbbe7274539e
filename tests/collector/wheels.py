"""Task packages for the tests, written as wheel files (a zip with the dist-info the wheel
format asks for): no build tool, no network. Each fixture package has no dependencies."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

#: A task script that follows the Fractal task contract (``--args-json``, ``--out-json``):
#: it writes an empty output, or the parallelization list of an init task.
TASK_SCRIPT = """\
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--args-json", required=True)
parser.add_argument("--out-json", required=True)
ns = parser.parse_args()
args = json.load(open(ns.args_json))
out = {}
if "zarr_urls" in args and __file__.endswith("_init.py"):
    items = [{"zarr_url": u, "init_args": {"a": 1}} for u in args["zarr_urls"]]
    out = {"parallelization_list": items}
elif "zarr_url" in args:
    update = {"zarr_url": args["zarr_url"], "types": {"%s": True}}
    out = {"image_list_updates": [update]}
json.dump(out, open(ns.out_json, "w"))
"""

SCHEMA = {"title": "Args", "type": "object", "properties": {"x": {"type": "integer"}}}


def good_manifest() -> dict[str, Any]:
    """Three tasks: non-parallel, parallel, compound, all with args schemas."""
    return {
        "manifest_version": "2",
        "has_args_schemas": True,
        "args_schema_version": "pydantic_v1",
        "task_list": [
            {
                "name": "Create Things",
                "executable_non_parallel": "create.py",
                "args_schema_non_parallel": SCHEMA,
                "meta_non_parallel": {"cpus_per_task": 1},
                "docs_info": "Creates things.",
            },
            {
                "name": "Treat Image",
                "executable_parallel": "treat.py",
                "args_schema_parallel": SCHEMA,
                "output_types": {"treated": True},
                "docs_link": "https://example.org/treat",
            },
            {
                "name": "Compound Step",
                "executable_non_parallel": "step_init.py",
                "executable_parallel": "step.py",
                "args_schema_non_parallel": SCHEMA,
                "args_schema_parallel": SCHEMA,
                "input_types": {"treated": True},
            },
        ],
    }


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(
    folder: Path,
    dist_name: str,
    version: str,
    files: dict[str, bytes | str],
) -> Path:
    """A pure-Python wheel of ``dist_name`` holding ``files`` (paths inside site-packages)."""
    stem = dist_name.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    contents[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
    ).encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: fractal-grpc-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    records = [_record_line(path, data) for path, data in contents.items()]
    records.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(records) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


def task_package(
    folder: Path,
    dist_name: str,
    version: str,
    *,
    manifest: dict[str, Any] | str | None,
    scripts: tuple[str, ...] = ("create.py", "treat.py", "step_init.py", "step.py"),
) -> Path:
    """A task package: its module (``dist_name`` with "-" as "_", lowercased), its scripts and
    its manifest (a dict, raw text, or None for no manifest)."""
    module = dist_name.replace("-", "_").replace(".", "_").lower()
    files: dict[str, bytes | str] = {f"{module}/__init__.py": ""}
    for script in scripts:
        files[f"{module}/{script}"] = TASK_SCRIPT % script.removesuffix(".py")
    if manifest is not None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        files[f"{module}/__FRACTAL_MANIFEST__.json"] = text
    return write_wheel(folder, dist_name, version, files)


def build_fixtures(folder: Path, tag: str) -> dict[str, Path]:
    """Every fixture package of the tests, by role; ``tag`` is part of every name (task
    sources are unique across the whole database the tests share)."""
    v1 = {
        "manifest_version": "1",
        "task_list": [{"name": "Old", "executable": "create.py", "input_type": "zarr"}],
    }
    return {
        "good": task_package(
            folder, f"fractal-tasks-good-{tag}", "0.1.0", manifest=good_manifest()
        ),
        "good_next": task_package(
            folder, f"fractal-tasks-good-{tag}", "0.2.0", manifest=good_manifest()
        ),
        "v1": task_package(folder, f"fractal-tasks-legacy-{tag}", "1.0.0", manifest=v1),
        "no_manifest": task_package(folder, f"fractal-tasks-bare-{tag}", "1.0.0", manifest=None),
        "invalid": task_package(
            folder, f"fractal-tasks-broken-{tag}", "1.0.0", manifest="{not json"
        ),
        "bad_schema": task_package(
            folder,
            f"fractal-tasks-halfway-{tag}",
            "1.0.0",
            manifest={"manifest_version": "2", "task_list": [{"name": "No executable"}]},
        ),
        "missing_exe": task_package(
            folder,
            f"fractal-tasks-lost-{tag}",
            "1.0.0",
            manifest=good_manifest(),
            scripts=("create.py", "treat.py"),
        ),
        "run": task_package(folder, f"fractal-tasks-run-{tag}", "1.0.0", manifest=good_manifest()),
        "life": task_package(
            folder, f"fractal-tasks-life-{tag}", "1.0.0", manifest=good_manifest()
        ),
        "upload": task_package(
            folder, f"fractal-tasks-upload-{tag}", "2.1.0", manifest=good_manifest()
        ),
        "race": task_package(
            folder, f"fractal-tasks-race-{tag}", "1.0.0", manifest=good_manifest()
        ),
        "non_canonical": task_package(
            folder, f"Fractal_Tasks-Foo_{tag}", "0.3.0", manifest=good_manifest()
        ),
    }
