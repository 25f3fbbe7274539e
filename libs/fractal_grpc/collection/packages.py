"""What a collection request may name, checked against a strict grammar before anything reaches
an installer or a shell: package names (PEP 508), versions (PEP 440), extras, pins, wheel paths
and Python versions. Each check returns the value to use or raises ``PackageError`` naming the
field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

# PEP 508 names: letters, digits, and "-_." inside.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
# The characters a PEP 440 version may hold (the parse below decides the rest).
_VERSION_CHARS = re.compile(r"^[A-Za-z0-9.+!_-]{1,128}$")
# A wheel path: absolute, made of plain characters only (no spaces, quotes, "$", ";", …).
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9._+/@=-]{1,4095}$")
_PYTHON = re.compile(r"^3\.[0-9]{1,2}$")


class PackageError(ValueError):
    """A value outside the grammar; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalize_name(name: str) -> str:
    """The reference's (and PEP 503's) normalized name: lowercase, runs of "-_." as "-"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_name(value: str, field: str = "package") -> str:
    """A PEP 508 distribution name, normalized."""
    if not _NAME.match(value):
        raise PackageError(
            field, "must be a package name (letters, digits and '-_.' inside, at most 200)"
        )
    return normalize_name(value)


def check_version(value: str, field: str = "package_version") -> str:
    """A PEP 440 version, as given (stripped)."""
    value = value.strip()
    if not _VERSION_CHARS.match(value):
        raise PackageError(field, "must be a version such as 1.2.3 (PEP 440)")
    try:
        Version(value)
    except InvalidVersion:
        raise PackageError(field, f"{value!r} is not a valid version (PEP 440)") from None
    return value


def check_extras(value: str, field: str = "package_extras") -> str:
    """Comma-separated extras (each a name), normalized and joined by ","."""
    parts = [part.strip() for part in value.split(",")]
    if not parts or any(not part for part in parts):
        raise PackageError(field, "must be extra names separated by commas")
    return ",".join(check_name(part, field) for part in parts)


def check_pins(pins: dict[str, str], field: str = "pinned_package_versions") -> dict[str, str]:
    """Pinned dependency versions: normalized names to versions."""
    checked: dict[str, str] = {}
    for name, version in sorted(pins.items()):
        key = check_name(name, f"{field}[{name[:50]}]")
        if key in checked:
            raise PackageError(field, f"{key} is pinned twice")
        checked[key] = check_version(version, f"{field}[{name[:50]}]")
    return checked


def check_python_version(value: str, configured: dict[str, str]) -> str:
    if not _PYTHON.match(value):
        raise PackageError("python_version", "must be a version such as 3.11")
    if value not in configured:
        known = ", ".join(sorted(configured)) or "none"
        raise PackageError(
            "python_version",
            f"no interpreter is configured for Python {value} "
            f"(FRACTAL_TASKS_PYTHON_{value.replace('.', '_')}); configured: {known}",
        )
    return value


def check_absolute_path(value: str, field: str) -> str:
    """An absolute path of plain characters (it becomes part of task commands)."""
    if not value.startswith("/"):
        raise PackageError(field, "must be an absolute path")
    if not _PATH_CHARS.match(value) or "/../" in value or value.endswith("/..") or "//" in value:
        raise PackageError(
            field, "may hold only letters, digits, '/' and '._+@=-' (no '..', no '//')"
        )
    return value.rstrip("/") or "/"


@dataclass(frozen=True)
class Wheel:
    path: str
    name: str  # normalized
    version: str


def check_wheel_path(value: str, field: str = "package") -> Wheel:
    """An absolute path of a wheel file whose file name says the package and its version."""
    if not value.startswith("/"):
        raise PackageError(field, "a wheel must be given by its absolute path")
    if not value.endswith(".whl"):
        raise PackageError(field, "a path must be that of a wheel file (ending with .whl)")
    if not _PATH_CHARS.match(value) or "/../" in value or "/./" in value or "//" in value:
        raise PackageError(
            field, "the wheel path may hold only letters, digits, '/' and '._+@=-' (no '..')"
        )
    filename = PurePosixPath(value).name
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise PackageError(field, f"not a valid wheel file name: {exc}") from None
    return Wheel(path=value, name=normalize_name(name), version=str(version))


@dataclass(frozen=True)
class PackageSpec:
    """A checked collection request: what the collector installs."""

    name: str  # normalized
    version: str | None  # None: the newest of the index
    extras: str | None
    python_version: str
    pins: dict[str, str] = field(default_factory=dict)
    wheel_path: str | None = None

    @property
    def origin(self) -> str:
        """The reference's source prefix: ``pip_local`` for a wheel, else ``pip_remote``."""
        return "pip_local" if self.wheel_path else "pip_remote"


def check_request(
    package: str,
    version: str | None,
    extras: str | None,
    python_version: str | None,
    pins: dict[str, str],
    *,
    pythons: dict[str, str],
    default_python: str | None,
) -> PackageSpec:
    """The reference's ``TaskCollectPipV2`` + ``_TaskCollectPip`` checks, on strict grammars."""
    python = python_version if python_version is not None else default_python
    if python is None:
        raise PackageError("python_version", "no default Python is configured; give one")
    python = check_python_version(python, pythons)
    checked_extras = check_extras(extras) if extras is not None else None
    checked_pins = check_pins(pins)
    if "/" in package:
        if version is not None:
            raise PackageError(
                "package_version", "Cannot provide package version when package is a wheel file."
            )
        wheel = check_wheel_path(package)
        return PackageSpec(
            wheel.name, wheel.version, checked_extras, python, checked_pins, wheel.path
        )
    name = check_name(package)
    checked_version = check_version(version) if version is not None else None
    return PackageSpec(name, checked_version, checked_extras, python, checked_pins)
