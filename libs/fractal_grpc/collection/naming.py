"""Names the reference derives from a package: the environment folder, the package source and
each task's source (reference §8.2)."""

from __future__ import annotations

from pathlib import PurePosixPath

#: Environments live in this folder of FRACTAL_TASKS_DIR (the reference's layout).
ENVS_FOLDER = ".fractal"


def env_folder(
    tasks_dir: str,
    name: str,
    version: str,
    extras: str | None,
    python_version: str,
    default_python: str | None,
) -> str:
    """``{tasks_dir}/.fractal/{name}{version}`` as in the reference, with ``_{extras}`` and
    ``_py{X.Y}`` appended when extras are given or the Python is not the default one (the
    reference gives both the same folder, so the second collection was "already installed")."""
    folder = f"{name}{version}"
    if extras:
        folder += "_" + extras.replace(",", "_")
    if python_version != default_python:
        folder += f"_py{python_version}"
    return str(PurePosixPath(tasks_dir) / ENVS_FOLDER / folder)


def package_source(
    origin: str, name: str, version: str, extras: str | None, python_version: str
) -> str:
    """The reference's ``package_source``: ``pip_remote:fractal_tasks_core:1.0.2:extra:py3.10``."""
    return ":".join([origin, name.replace("-", "_"), version, extras or "", f"py{python_version}"])


def task_slug(task_name: str) -> str:
    """The reference's slug of a task name: lowercase, spaces as underscores."""
    return task_name.replace(" ", "_").lower()


def task_source(source: str, task_name: str) -> str:
    return f"{source}:{task_slug(task_name)}"
