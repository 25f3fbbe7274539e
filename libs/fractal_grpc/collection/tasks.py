"""The tasks a collection registers, built from its manifest (reference §8.2 step 3)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from fractal_grpc.collection.manifest import Manifest
from fractal_grpc.collection.naming import task_source


@dataclass(frozen=True)
class TaskDraft:
    """One task, ready for registration."""

    name: str
    source: str
    version: str
    command_non_parallel: str | None
    command_parallel: str | None
    meta_non_parallel: dict[str, Any]
    meta_parallel: dict[str, Any]
    args_schema_non_parallel: dict[str, Any] | None
    args_schema_parallel: dict[str, Any] | None
    args_schema_version: str | None
    docs_info: str | None
    docs_link: str | None
    input_types: dict[str, bool]
    output_types: dict[str, bool]


def command(python: str, package_root: str, executable: str) -> str:
    """``{python} {package_root}/{executable}``, each word quoted for shlex (the runner splits
    commands with shlex, never through a shell)."""
    return shlex.join([python, f"{package_root.rstrip('/')}/{executable}"])


def build_tasks(
    manifest: Manifest, *, python: str, package_root: str, source: str, version: str
) -> list[TaskDraft]:
    drafts = []
    for task in manifest.task_list:
        drafts.append(
            TaskDraft(
                name=task.name,
                source=task_source(source, task.name),
                version=version,
                command_non_parallel=command(python, package_root, task.executable_non_parallel)
                if task.executable_non_parallel
                else None,
                command_parallel=command(python, package_root, task.executable_parallel)
                if task.executable_parallel
                else None,
                meta_non_parallel=task.meta_non_parallel,
                meta_parallel=task.meta_parallel,
                args_schema_non_parallel=task.args_schema_non_parallel,
                args_schema_parallel=task.args_schema_parallel,
                args_schema_version=manifest.args_schema_version
                if manifest.has_args_schemas
                else None,
                docs_info=task.docs_info,
                docs_link=task.docs_link,
                input_types=task.input_types,
                output_types=task.output_types,
            )
        )
    return drafts
