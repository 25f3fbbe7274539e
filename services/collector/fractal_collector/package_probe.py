"""What got installed: the distribution's name and version and its manifest's path, asked of
the environment's own Python (``fractal_grpc.collection.commands.PROBE``) on the collection's
host, then the manifest read and validated."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from fractal_collector.hosts import Host, HostFileError
from fractal_grpc.collection import commands
from fractal_grpc.collection.manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest
from fractal_grpc.collection.packages import normalize_name


class PackageProblem(Exception):
    """The installed package cannot be collected; the message says why."""


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    package_root: PurePosixPath
    manifest: Manifest


async def probe(host: Host, env_dir: str, name: str, log: Callable[[str], None]) -> Installed:
    result = await host.run(commands.probe(env_dir, name), log, check=False)
    if result.returncode != 0:
        raise PackageProblem(f"package {name} is not installed in the environment")
    try:
        found = json.loads(result.output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PackageProblem("could not read what was installed") from None
    if normalize_name(found["name"]) != name:
        raise PackageProblem(f"the environment holds {found['name']}, not {name}")
    if not found["manifest"]:
        raise PackageProblem(f"package {name} {found['version']} has no {MANIFEST_FILE}")
    path = PurePosixPath(found["manifest"])
    try:
        data = json.loads(await host.read_text(str(path)))
    except HostFileError as exc:
        raise PackageProblem(f"invalid manifest {MANIFEST_FILE}: not readable ({exc})") from None
    except ValueError as exc:
        raise PackageProblem(
            f"invalid manifest {MANIFEST_FILE}: not readable JSON ({exc})"
        ) from None
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        raise PackageProblem(f"invalid manifest: {exc}") from None
    return Installed(found["name"], found["version"], path.parent, manifest)


async def check_executables(host: Host, installed: Installed) -> None:
    """Every executable the manifest names exists in the installed package."""
    root = installed.package_root
    wanted = {
        str(root / executable): (task.name, executable)
        for task in installed.manifest.task_list
        for executable in task.executables()
    }
    missing = await host.missing_files(list(wanted))
    if missing:
        task, executable = wanted[missing[0]]
        raise PackageProblem(
            f"task {task!r}: executable {executable} is missing from the package ({missing[0]})"
        )
