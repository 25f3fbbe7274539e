"""``commands.PROBE``, the script an environment's Python runs to say what got installed: its
own ``.dist-info`` lookup answers as ``importlib.metadata`` does, which it falls back to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fractal_grpc.collection.commands import PROBE

#: The same script with the ``.dist-info`` lookup switched off: ``importlib.metadata`` only.
SLOW = PROBE.replace("fast(norm(sys.argv[1])) or ", "")


def _run(script: str, name: str, site: Path) -> tuple[int, dict[str, Any] | None]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", script, name], env=env, capture_output=True, text=True, check=False
    )
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else None


def _site(tmp_path: Path, record: str, folder: str = "Fractal_Tasks_X-1.2.dist-info") -> Path:
    site = tmp_path / "site"
    info = site / folder
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Fractal_Tasks-X\nVersion: 1.2\n\nName: not a header\n"
    )
    (info / "RECORD").write_text(record)
    package = site / "fractal_tasks_x"
    package.mkdir()
    (package / "__FRACTAL_MANIFEST__.json").write_text("{}")
    return site


@pytest.mark.parametrize(
    "record",
    [
        "fractal_tasks_x/__init__.py,,\nfractal_tasks_x/__FRACTAL_MANIFEST__.json,sha256=x,2\n",
        '"fractal_tasks_x/__FRACTAL_MANIFEST__.json",sha256=x,2\r\n',
        "fractal_tasks_x/__init__.py,,\n",
    ],
    ids=["plain", "quoted-crlf", "no-manifest"],
)
@pytest.mark.parametrize("asked", ["fractal-tasks-x", "Fractal_Tasks.X", "fractal__tasks--x"])
def test_the_dist_info_lookup_answers_as_importlib_metadata(
    tmp_path: Path, record: str, asked: str
) -> None:
    site = _site(tmp_path, record)
    code, fast = _run(PROBE, asked, site)
    assert code == 0 and fast is not None
    assert _run(SLOW, asked, site) == (0, fast)
    assert fast["name"] == "Fractal_Tasks-X" and fast["version"] == "1.2"
    manifest = site / "fractal_tasks_x" / "__FRACTAL_MANIFEST__.json"
    assert fast["manifest"] == (None if "MANIFEST" not in record else str(manifest.resolve()))


def test_an_egg_info_install_is_found_by_importlib_metadata(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "fractal_tasks_x.egg-info"
    info.mkdir(parents=True)
    (info / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: fractal-tasks-x\nVersion: 3.0\n")
    code, found = _run(PROBE, "fractal-tasks-x", site)
    assert code == 0 and found == {"name": "fractal-tasks-x", "version": "3.0", "manifest": None}


def test_a_package_not_installed_is_an_error(tmp_path: Path) -> None:
    site = _site(tmp_path, "")
    assert _run(PROBE, "fractal-tasks-other", site) == (1, None)
    # A folder of a name that only begins alike is another distribution.
    assert _run(PROBE, "fractal-tasks", site) == (1, None)
