"""The README's grpcurl walk-through, exactly as written there, run twice in a row against a
running stack (api and runner as processes): it must keep working without edits, so it cannot
drift from the API."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from e2e_stack import Stack

ROOT = Path(__file__).parents[2]
SECTION = "## A walk through the API with grpcurl"


def walkthrough() -> str:
    """The first bash block of the README's walk-through section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block in the walk-through"
    return match.group(1)


def answers(output: str) -> list[Any]:
    """The JSON documents grpcurl printed one after the other (other lines skipped)."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while (start := output.find("{", at)) != -1:
        try:
            value, at = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        found.append(value)
    return found


def run_once(stack: Stack, zarr_root: Path) -> list[Any]:
    env = {**os.environ, "A": stack.api_address, "Z": str(zarr_root)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return answers(done.stdout)


def test_the_walkthrough_runs_twice_without_edits(stack: Stack, tmp_path: Path) -> None:
    projects = set()
    for _ in range(2):
        docs = run_once(stack, tmp_path)
        jobs = [d["job"] for d in docs if "job" in d]
        assert jobs and jobs[-1]["status"] == "JOB_STATUS_DONE", docs
        projects.add(jobs[-1]["project_id"])
        # QueryImages: only A01 was corrected; the facets are plain JSON lists.
        page = next(d for d in docs if "images" in d and "types" in d)
        assert [i["attributes"] for i in page["images"]] == [{"well": "A01", "z": 3}]
        assert page["images"][0]["types"] == {"3D": True, "illumination_correction": True}
        assert sorted(page["attributes"]["well"]) == ["A01", "B02"]
        assert page["attributes"]["z"] == [3]
        dataset = [d["dataset"] for d in docs if "dataset" in d][-1]
        assert dataset["filters"]["types"] == {"illumination_correction": True}
        assert [h["status"] for h in dataset["history"]] == ["HISTORY_STATUS_DONE"]
    assert len(projects) == 2
