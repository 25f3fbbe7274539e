"""The SLURM config file of reference §7.3 (``FRACTAL_SLURM_CONFIG_FILE``), validated.

A JSON object with ``default_slurm_config`` (required), ``gpu_slurm_config`` (optional; both take
partition, cpus_per_task, mem, constraint, gres, gpus, time, account, extra_lines,
pre_submission_commands, all optional), ``batching_config`` (required, all six keys required) and
``user_local_exports`` (optional, name → path relative to the user's cache dir / the remote job
dir). Unknown keys are refused, as in the reference; memory sizes are converted to MB on load
(:func:`~fractal_runner.slurm.memory.parse_mem_mb`). The runner loads the file at start and again
for every task, so edits apply without a restart.

Departures (stricter, with clear messages instead of later crashes): counts and sizes must be
positive, ``default_slurm_config`` must set ``partition``, ``cpus_per_task`` and ``mem`` (the
reference fails at the first task without them), targets may not exceed their maxima.
"""

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.memory import parse_mem_mb

__all__ = [
    "BatchingConfig",
    "SlurmConfigFile",
    "SlurmConfigSet",
    "load_slurm_config_file",
    "parse_slurm_config",
    "validation_message",
]

NonEmptyStr = Annotated[str, Field(min_length=1)]


class SlurmConfigSet(BaseModel):
    """``default_slurm_config`` / ``gpu_slurm_config``: SLURM options, each optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: NonEmptyStr | None = None
    cpus_per_task: PositiveInt | None = None
    mem: PositiveInt | None = None  # MB, converted from "4G" & co. on load
    constraint: NonEmptyStr | None = None
    gres: NonEmptyStr | None = None
    gpus: NonEmptyStr | None = None
    time: NonEmptyStr | None = None
    account: NonEmptyStr | None = None
    extra_lines: list[str] | None = None
    pre_submission_commands: list[str] | None = None

    @field_validator("mem", mode="before")
    @classmethod
    def _mem_in_mb(cls, value: Any) -> Any:
        return None if value is None else parse_mem_mb(value)


class BatchingConfig(BaseModel):
    """``batching_config``: the six limits of the batching heuristics (reference §7.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_cpus_per_job: PositiveInt
    max_cpus_per_job: PositiveInt
    target_mem_per_job: PositiveInt  # MB
    max_mem_per_job: PositiveInt  # MB
    target_num_jobs: PositiveInt
    max_num_jobs: PositiveInt

    @field_validator("target_mem_per_job", "max_mem_per_job", mode="before")
    @classmethod
    def _mem_in_mb(cls, value: Any) -> Any:
        return parse_mem_mb(value)


class SlurmConfigFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_slurm_config: SlurmConfigSet
    gpu_slurm_config: SlurmConfigSet | None = None
    batching_config: BatchingConfig
    user_local_exports: dict[NonEmptyStr, NonEmptyStr] | None = None

    @field_validator("default_slurm_config")
    @classmethod
    def _default_is_complete(cls, value: SlurmConfigSet) -> SlurmConfigSet:
        missing = [k for k in ("partition", "cpus_per_task", "mem") if getattr(value, k) is None]
        if missing:
            raise ValueError(f"must set {', '.join(missing)}")
        return value

    @field_validator("batching_config")
    @classmethod
    def _targets_within_maxima(cls, value: BatchingConfig) -> BatchingConfig:
        for what in ("cpus_per_job", "mem_per_job", "num_jobs"):
            target, top = getattr(value, f"target_{what}"), getattr(value, f"max_{what}")
            if target > top:
                raise ValueError(f"target_{what}={target} exceeds max_{what}={top}")
        return value


def validation_message(error: ValidationError) -> str:
    """One line per problem, ``field.path: reason``, without pydantic's URLs and class names."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_slurm_config(data: Any, *, source: str = "SLURM config") -> SlurmConfigFile:
    """Validate the decoded JSON ``data``; SlurmConfigError naming ``source`` and each bad field."""
    try:
        return SlurmConfigFile.model_validate(data)
    except SlurmConfigError as exc:  # raised by a validator, not wrapped by pydantic
        raise SlurmConfigError(f"{source} is invalid: {exc}") from None
    except ValidationError as exc:
        raise SlurmConfigError(f"{source} is invalid: {validation_message(exc)}") from None


def load_slurm_config_file(path: Path) -> SlurmConfigFile:
    """Read and validate the file at ``path``; SlurmConfigError if unreadable or invalid."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SlurmConfigError(f"cannot read SLURM config file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlurmConfigError(f"SLURM config file {path} is not valid JSON: {exc}") from None
    return parse_slurm_config(data, source=f"SLURM config file {path}")
