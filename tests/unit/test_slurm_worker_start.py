"""The SLURM worker starts once per task call on the compute node, so what it imports is paid
per call: it must not load the runner's local-executor layer (pydantic, psutil, asyncio), which
``fractal_runner.taskproc`` provides on first use only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fractal_runner.taskproc as taskproc

HEAVY = [
    "asyncio",
    "fractal_runner.taskproc.local_executor",
    "fractal_runner.taskproc.local_config",
    "psutil",
    "pydantic",
]


def test_the_worker_module_loads_without_the_local_executor_layer() -> None:
    probe = (
        "import json, sys\n"
        "import fractal_runner.slurm.worker\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("LocalExecutor", "fractal_runner.taskproc.local_executor"),
        ("LocalBackendConfig", "fractal_runner.taskproc.local_config"),
        ("LocalBackendConfigError", "fractal_runner.taskproc.local_config"),
        ("get_local_config", "fractal_runner.taskproc.local_config"),
    ],
)
def test_the_lazy_names_are_the_modules_own(name: str, module: str) -> None:
    assert getattr(taskproc, name) is getattr(sys.modules[module], name)
    assert name in taskproc.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = taskproc.Nope
