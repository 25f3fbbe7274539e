"""``__FRACTAL_MANIFEST__.json`` (reference §8.1): manifest v2 validated in full; a v1 manifest
(or any other version) is refused with a message saying so. ``ManifestError`` messages are
meant for the collection's log and error: they name the task and the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from fractal_grpc.collection.naming import task_slug

MANIFEST_FILE = "__FRACTAL_MANIFEST__.json"
_SIDES = ("non_parallel", "parallel")
_TASK_KEYS = {
    "name",
    "executable_non_parallel",
    "executable_parallel",
    "input_types",
    "output_types",
    "meta_non_parallel",
    "meta_parallel",
    "args_schema_non_parallel",
    "args_schema_parallel",
    "docs_info",
    "docs_link",
    "category",
    "modality",
    "tags",
    "authors",
    "type",
}
#: A task's declared ``type`` (manifests of fractal-task-tools packages carry it): a converter
#: is a task that makes images rather than reading them, of the base type its executables give.
_DECLARED_TYPES = {
    "non_parallel": "non_parallel",
    "parallel": "parallel",
    "compound": "compound",
    "converter_non_parallel": "non_parallel",
    "converter_compound": "compound",
}


class ManifestError(ValueError):
    """The manifest cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ManifestTask:
    name: str
    executable_non_parallel: str | None
    executable_parallel: str | None
    input_types: dict[str, bool] = field(default_factory=dict)
    output_types: dict[str, bool] = field(default_factory=dict)
    meta_non_parallel: dict[str, Any] = field(default_factory=dict)
    meta_parallel: dict[str, Any] = field(default_factory=dict)
    args_schema_non_parallel: dict[str, Any] | None = None
    args_schema_parallel: dict[str, Any] | None = None
    docs_info: str | None = None
    docs_link: str | None = None

    @property
    def type(self) -> str:
        """non_parallel, parallel or compound: which executables it has (reference §8.1)."""
        if self.executable_non_parallel and self.executable_parallel:
            return "compound"
        return "parallel" if self.executable_parallel else "non_parallel"

    def executables(self) -> list[str]:
        return [e for e in (self.executable_non_parallel, self.executable_parallel) if e]


@dataclass(frozen=True)
class Manifest:
    task_list: list[ManifestTask]
    has_args_schemas: bool = False
    args_schema_version: str | None = None


def _executable(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: must be a non-empty string or null")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value or "\x00" in value:
        raise ManifestError(f"{where}: must be a path inside the package ({value!r})")
    if any(c.isspace() for c in value):
        raise ManifestError(f"{where}: must not contain white space ({value!r})")
    return value


def _types(value: Any, where: str) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, bool) for k, v in value.items()
    ):
        raise ManifestError(f"{where}: must map type names to true/false")
    return dict(value)


def _object(value: Any, where: str, *, nullable: bool) -> dict[str, Any] | None:
    if value is None:
        return None if nullable else {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must be an object{' or null' if nullable else ''}")
    return value


def _text(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{where}: must be a string or null")
    return value


def _task(raw: Any, index: int) -> ManifestTask:
    where = f"task_list[{index}]"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(f"{where}.name: must be a non-empty string")
    where = f"task {name!r}"
    unknown = sorted(set(raw) - _TASK_KEYS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {"name": name}
    for side in _SIDES:
        values[f"executable_{side}"] = _executable(
            raw.get(f"executable_{side}"), f"{where}.executable_{side}"
        )
        values[f"meta_{side}"] = _object(
            raw.get(f"meta_{side}"), f"{where}.meta_{side}", nullable=False
        )
        values[f"args_schema_{side}"] = _object(
            raw.get(f"args_schema_{side}"), f"{where}.args_schema_{side}", nullable=True
        )
        if values[f"executable_{side}"] is None and (
            values[f"meta_{side}"] or values[f"args_schema_{side}"] is not None
        ):
            raise ManifestError(
                f"{where}: meta_{side} and args_schema_{side} need executable_{side}"
            )
    if not values["executable_non_parallel"] and not values["executable_parallel"]:
        raise ManifestError(
            f"{where}: needs executable_non_parallel or executable_parallel (or both)"
        )
    task_type = ManifestTask(**values).type
    declared = raw.get("type")
    if declared is not None and _DECLARED_TYPES.get(declared) != task_type:
        raise ManifestError(
            f"{where}.type: {declared!r} does not match its executables (a {task_type} task)"
        )
    values["input_types"] = _types(raw.get("input_types"), f"{where}.input_types")
    values["output_types"] = _types(raw.get("output_types"), f"{where}.output_types")
    values["docs_info"] = _text(raw.get("docs_info"), f"{where}.docs_info")
    link = _text(raw.get("docs_link"), f"{where}.docs_link")
    if link is not None:
        parsed = urlparse(link)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ManifestError(f"{where}.docs_link: must be an http(s) URL")
    values["docs_link"] = link
    return ManifestTask(**values)


def parse_manifest(data: Any) -> Manifest:
    """Validate a decoded manifest: version "2" only, every task as reference ``TaskManifestV2``,
    the ``has_args_schemas`` rule, and task names whose sources (slugs) are distinct."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object")
    version = data.get("manifest_version")
    if version != "2":
        if str(version) == "1":
            raise ManifestError(
                "manifest_version 1 (a Fractal V1 task package) is not supported: "
                "only manifest_version 2 packages can be collected"
            )
        raise ManifestError(f'unsupported manifest_version {version!r}: only "2" is supported')
    unknown = sorted(
        set(data)
        - {"manifest_version", "task_list", "has_args_schemas", "args_schema_version", "authors"}
    )
    if unknown:
        raise ManifestError(f"unknown manifest field(s) {', '.join(unknown)}")
    task_list = data.get("task_list")
    if not isinstance(task_list, list) or not task_list:
        raise ManifestError("task_list: must be a non-empty list")
    has_schemas = data.get("has_args_schemas", False)
    if not isinstance(has_schemas, bool):
        raise ManifestError("has_args_schemas: must be true or false")
    schema_version = _text(data.get("args_schema_version"), "args_schema_version")
    tasks = [_task(raw, i) for i, raw in enumerate(task_list)]
    slugs: dict[str, str] = {}
    for task in tasks:
        earlier = slugs.setdefault(task_slug(task.name), task.name)
        if earlier != task.name or sum(t.name == task.name for t in tasks) > 1:
            raise ManifestError(
                f"task names {earlier!r} and {task.name!r} give the same task source"
            )
        if has_schemas:
            for side in _SIDES:
                if (
                    getattr(task, f"executable_{side}")
                    and getattr(task, f"args_schema_{side}") is None
                ):
                    raise ManifestError(
                        f"task {task.name!r}: has_args_schemas is true but "
                        f"args_schema_{side} is missing"
                    )
    return Manifest(tasks, has_schemas, schema_version)
