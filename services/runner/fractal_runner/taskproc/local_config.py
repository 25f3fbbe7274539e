"""Configuration of the `local` executor (reference §7.1, "Local config")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

__all__ = ["LocalBackendConfig", "LocalBackendConfigError", "get_local_config"]

_KEY = "parallel_tasks_per_job"


class LocalBackendConfigError(ValueError):
    """The local backend configuration (task meta or config file) is invalid."""


class LocalBackendConfig(BaseModel):
    """`parallel_tasks_per_job`: how many calls of one task run at once (None: no limit)."""

    model_config = ConfigDict(extra="forbid")

    parallel_tasks_per_job: PositiveInt | None = None


def _validate(data: Any, source: str) -> LocalBackendConfig:
    if not isinstance(data, dict):
        raise LocalBackendConfigError(
            f"Invalid local backend configuration in {source}: expected a JSON object, "
            f"got {type(data).__name__}."
        )
    try:
        return LocalBackendConfig.model_validate(data)
    except ValidationError as e:
        raise LocalBackendConfigError(
            f"Invalid local backend configuration in {source}:\n{e}"
        ) from e


def get_local_config(
    wftask_meta: dict[str, Any] | None, config_file: Path | None
) -> LocalBackendConfig:
    """The configuration for one part of a workflow task, with the reference's priority.

    1. `wftask_meta["parallel_tasks_per_job"]` when the key is present (even if its value is
       null); `wftask_meta` is meta_non_parallel or meta_parallel, whichever part runs.
       Other meta keys belong to other backends and are ignored.
    2. Otherwise the JSON object in `config_file` (e.g. `{"parallel_tasks_per_job": 4}`), which
       must be a valid LocalBackendConfig (unknown keys are rejected).
    3. Otherwise `parallel_tasks_per_job=None`.

    Raises LocalBackendConfigError for an invalid meta value or a missing, unreadable or
    invalid config file.
    """
    if wftask_meta and _KEY in wftask_meta:
        return _validate({_KEY: wftask_meta[_KEY]}, "the workflow task meta")
    if config_file is None:
        return LocalBackendConfig()
    source = f"file {config_file}"
    try:
        text = config_file.read_text(encoding="utf-8")
    except OSError as e:
        raise LocalBackendConfigError(f"Cannot read the local backend config {source}: {e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LocalBackendConfigError(
            f"Invalid local backend configuration in {source}: not valid JSON ({e})."
        ) from e
    return _validate(data, source)
