"""The command lines of a collection, as argument lists (never a shell line): environment
creation, version resolution, installation, freeze, and the probe that finds the installed
package's root and manifest. Two installers: ``uv`` (the default) and ``pip`` (the reference's
steps, with its cap on pip's version). Every value in them has passed ``packages``' grammar."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from fractal_grpc.collection.packages import PackageSpec, normalize_name

INSTALLERS = ("uv", "pip")

#: Run by the environment's Python with the package name: prints one JSON line with the
#: installed distribution's name, version, and the absolute path of its manifest (or null).
#: It finds the distribution's ``.dist-info`` folder on ``sys.path`` itself (the first one, as
#: ``importlib.metadata`` does) and reads its METADATA and RECORD with ``os`` and ``json``
#: only: importing ``importlib.metadata`` costs a new interpreter most of a second on a loaded
#: machine, the better part of a collection's own time. A distribution without one (an
#: ``.egg-info`` install) is looked up with ``importlib.metadata``.
PROBE = """\
import json, os, sys

def norm(text):
    out = []
    for c in text.lower():
        c = "-" if c in "-_." else c
        if c != "-" or not out or out[-1] != "-":
            out.append(c)
    return "".join(out)

def headers(path):
    found = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            found.setdefault(key.strip().lower(), value.strip())
    return found

def fast(name):
    for folder in sys.path:
        try:
            entries = sorted(os.listdir(folder or "."))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".dist-info") or norm(entry[:-10].rpartition("-")[0]) != name:
                continue
            info = os.path.join(folder or ".", entry)
            meta = headers(os.path.join(info, "METADATA"))
            manifest = None
            with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
                for line in f:
                    path = line.rstrip("\\r\\n").rsplit(",", 2)[0]
                    if path.startswith('"') and path.endswith('"'):
                        path = path[1:-1].replace('""', '"')
                    if path.replace("\\\\", "/").rsplit("/", 1)[-1] == "__FRACTAL_MANIFEST__.json":
                        manifest = os.path.realpath(os.path.join(folder or ".", path))
                        break
            return {"name": meta.get("name"), "version": meta.get("version"), "manifest": manifest}
    return None

def slow(name):
    from importlib import metadata
    dist = metadata.distribution(name)
    manifest = None
    for f in dist.files or ():
        if f.name == "__FRACTAL_MANIFEST__.json":
            manifest = str(dist.locate_file(f).resolve())
            break
    return {"name": dist.metadata["Name"], "version": dist.version, "manifest": manifest}

print(json.dumps(fast(norm(sys.argv[1])) or slow(sys.argv[1])))
"""


@dataclass(frozen=True)
class IndexOptions:
    """Where packages come from: the default index, another one, and/or local folders."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def args(self) -> list[str]:
        out: list[str] = []
        if self.no_index:
            out.append("--no-index")
        elif self.index_url:
            out += ["--index-url", self.index_url]
        for link in self.find_links:
            out += ["--find-links", link]
        return out


@dataclass(frozen=True)
class Installer:
    kind: str  # "uv" or "pip"
    uv: str = "uv"  # the uv executable
    pip_max_version: str = "24.0"
    index: IndexOptions = field(default_factory=IndexOptions)


def venv_python(env_dir: str) -> str:
    return str(PurePosixPath(env_dir) / "venv" / "bin" / "python")


def requirement(spec: PackageSpec, version: str | None = None) -> str:
    """``name[extras]==version``, or ``name[extras] @ file:///path.whl`` for a wheel."""
    extras = f"[{spec.extras}]" if spec.extras else ""
    if spec.wheel_path:
        return f"{spec.name}{extras} @ file://{spec.wheel_path}"
    version = version or spec.version
    return f"{spec.name}{extras}" + (f"=={version}" if version else "")


def create_venv(installer: Installer, interpreter: str, env_dir: str) -> list[list[str]]:
    target = str(PurePosixPath(env_dir) / "venv")
    if installer.kind == "uv":
        return [[installer.uv, "venv", "--quiet", "--python", interpreter, target]]
    python = venv_python(env_dir)
    return [
        [interpreter, "-m", "venv", target],
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--upgrade",
            f"pip<={installer.pip_max_version}",
            *installer.index.args(),
        ],
    ]


def resolve_version(
    installer: Installer, interpreter: str, spec: PackageSpec, dest: str
) -> list[str]:
    """The newest version of an index package, without installing anything: ``uv pip compile``
    of the bare requirement, given on stdin (prints ``name==version``), or the reference's
    ``pip download --no-deps`` into ``dest`` (prints ``Saved …/name-version-….whl``)."""
    req = requirement(spec)
    if installer.kind == "uv":
        return [
            installer.uv,
            "pip",
            "compile",
            "--quiet",
            "--no-deps",
            "--no-header",
            "--no-annotate",
            "--python",
            interpreter,
            *installer.index.args(),
            "-",  # the requirement comes on stdin: resolve_input
        ]
    return [
        interpreter,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        *installer.index.args(),
        "--dest",
        dest,
        req,
    ]


def resolve_input(installer: Installer, spec: PackageSpec) -> str | None:
    """What ``resolve_version``'s command reads on stdin (uv: the requirement)."""
    return requirement(spec) + "\n" if installer.kind == "uv" else None


CONSTRAINTS_FILE = "pinned_versions.txt"


def constraints(spec: PackageSpec) -> str:
    """The pins as a constraints file: a pinned package is installed at that version if it is
    installed at all (the reference re-installs a pinned package that is present at another
    version, and leaves absent ones alone)."""
    return "".join(f"{name}=={pin}\n" for name, pin in sorted(spec.pins.items()))


def install(installer: Installer, env_dir: str, spec: PackageSpec, version: str) -> list[str]:
    """One install of the package with its extras, under its pins (``constraints``, written
    to ``{env_dir}/pinned_versions.txt`` when there are any), resolved together."""
    python = venv_python(env_dir)
    pins = ["--constraint", str(PurePosixPath(env_dir) / CONSTRAINTS_FILE)] if spec.pins else []
    req = requirement(spec, version)
    if installer.kind == "uv":
        return [
            installer.uv,
            "pip",
            "install",
            "--python",
            python,
            *installer.index.args(),
            *pins,
            req,
        ]
    return [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        *installer.index.args(),
        *pins,
        req,
    ]


def install_frozen(installer: Installer, env_dir: str, frozen_file: str) -> list[str]:
    """Reinstall exactly the frozen versions (a reactivation): no resolution, no new package."""
    python = venv_python(env_dir)
    if installer.kind == "uv":
        return [
            installer.uv,
            "pip",
            "install",
            "--python",
            python,
            *installer.index.args(),
            "--no-deps",
            "-r",
            frozen_file,
        ]
    return [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        *installer.index.args(),
        "--no-deps",
        "-r",
        frozen_file,
    ]


def freeze(installer: Installer, env_dir: str) -> list[str]:
    python = venv_python(env_dir)
    if installer.kind == "uv":
        return [installer.uv, "pip", "freeze", "--quiet", "--python", python]
    return [python, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"]


def probe(env_dir: str, name: str) -> list[str]:
    return [venv_python(env_dir), "-c", PROBE, name]


def resolved_version(kind: str, output: str, name: str) -> str | None:
    """The version ``resolve_version``'s output names for package ``name`` (normalized)."""
    for line in output.splitlines():
        line = line.strip()
        if kind == "uv":
            left, sep, version = line.partition("==")
            if sep and normalize_name(left.split("[")[0].strip()) == name:
                return version.split(";")[0].strip()
        elif line.startswith("Saved ") and line.endswith(".whl"):
            try:
                found, wheel_version, _, _ = parse_wheel_filename(PurePosixPath(line[6:]).name)
            except InvalidWheelFilename:
                continue
            if normalize_name(found) == name:
                return str(wheel_version)
    return None
