"""Running the `fractal` console script in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRACTAL = Path(sys.executable).parent / "fractal"
ADMIN = ("admin@fractal.xy", "1234")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs the `fractal` console script with its own config and cache folders."""

    env: dict[str, str]

    def __call__(self, *args: str, check: int | None = 0, timeout: float = 120) -> Result:
        proc = subprocess.run(
            [str(FRACTAL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check is not None:
            assert proc.returncode == check, (args, result)
        return result
