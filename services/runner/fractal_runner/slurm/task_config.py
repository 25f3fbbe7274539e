"""The SLURM options of one task part: the reference's per-task merge (§7.3, ``get_slurm_config``).

Increasing priority:

1. ``default_slurm_config`` (``mem`` becomes ``mem_per_task_mb``), the six batching limits and
   ``user_local_exports`` of the config file;
2. if the task meta has a truthy ``needs_gpu``: every key set in ``gpu_slurm_config``;
3. the task meta (``meta_parallel`` or ``meta_non_parallel``, the caller picks): ``cpus_per_task``
   (int), ``mem`` (parsed), ``time``, ``gres``, ``gpus``, ``constraint`` (each when present and not
   None), ``extra_lines`` (appended to the file's), ``tasks_per_job`` and
   ``parallel_tasks_per_job``. ``account`` in meta is refused: the account comes only from the
   job's ``slurm_account``. ``partition`` cannot be set per task.
4. ``job_name`` = the task name with spaces replaced by ``_``.

Then :func:`with_job_settings` adds what the submission brings: ``slurm_account`` and the
``worker_init`` lines (appended to ``extra_lines``; a line ``#SBATCH --account=…`` is refused).

Departures, on purpose: ``extra_lines`` are deduplicated keeping their order (the reference goes
through a ``set``, so the order of the lines in the script was arbitrary), and a ``worker_init``
line already present is not added twice (the reference then failed the job with "contains
repetitions" at its first submission, e.g. for a worker_init with two blank lines). ``needs_gpu``
without a ``gpu_slurm_config`` is a SlurmConfigError with a clear message (an AttributeError in the
reference). All errors are SlurmConfigError with a message for the user.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from fractal_runner.slurm.config_file import SlurmConfigFile, validation_message
from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.memory import parse_mem_mb

__all__ = ["SlurmConfig", "task_slurm_config", "with_job_settings"]

_OPTIONAL_META_KEYS = ("time", "gres", "gpus", "constraint")


class SlurmConfig(BaseModel):
    """The SLURM options of one task part, before batching."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str
    cpus_per_task: PositiveInt
    mem_per_task_mb: PositiveInt
    job_name: str | None = None
    constraint: str | None = None
    gres: str | None = None
    gpus: str | None = None
    time: str | None = None
    account: str | None = None
    extra_lines: tuple[str, ...] = ()
    pre_submission_commands: tuple[str, ...] = ()
    user_local_exports: dict[str, str] = Field(default_factory=dict)
    tasks_per_job: PositiveInt | None = None
    parallel_tasks_per_job: PositiveInt | None = None
    target_cpus_per_job: PositiveInt
    max_cpus_per_job: PositiveInt
    target_mem_per_job: PositiveInt
    max_mem_per_job: PositiveInt
    target_num_jobs: PositiveInt
    max_num_jobs: PositiveInt


def task_slurm_config(
    config_file: SlurmConfigFile, meta: Mapping[str, Any] | None, *, task_name: str
) -> SlurmConfig:
    """Merge the config file with one task part's ``meta`` (rules in the module docstring)."""
    meta = meta or {}
    merged: dict[str, Any] = _set_options(config_file.default_slurm_config)
    merged.update(config_file.batching_config.model_dump())
    merged["user_local_exports"] = dict(config_file.user_local_exports or {})

    if meta.get("needs_gpu"):
        if config_file.gpu_slurm_config is None:
            raise SlurmConfigError(
                "the task asks for a GPU (needs_gpu) but the SLURM config file has no "
                "gpu_slurm_config section"
            )
        merged.update(_set_options(config_file.gpu_slurm_config))

    if meta.get("account") is not None:
        raise SlurmConfigError(
            f"invalid account={meta['account']!r} in the task's meta: the SLURM account is set "
            "when the job is submitted (slurm_account) or in the user's settings"
        )
    if "cpus_per_task" in meta:
        merged["cpus_per_task"] = _meta_int(meta, "cpus_per_task")
    if "mem" in meta:
        try:
            merged["mem_per_task_mb"] = parse_mem_mb(meta["mem"])
        except SlurmConfigError as exc:
            raise SlurmConfigError(f"meta.mem: {exc}") from None
    for key in _OPTIONAL_META_KEYS:
        if meta.get(key) is not None:
            merged[key] = meta[key]
    meta_lines = meta.get("extra_lines") or []
    if not isinstance(meta_lines, list | tuple) or not all(isinstance(x, str) for x in meta_lines):
        raise SlurmConfigError("meta.extra_lines must be a list of strings")
    merged["extra_lines"] = _unique(list(merged.get("extra_lines", ())) + list(meta_lines))
    merged["tasks_per_job"] = meta.get("tasks_per_job")
    merged["parallel_tasks_per_job"] = meta.get("parallel_tasks_per_job")
    merged["job_name"] = task_name.replace(" ", "_")
    return _build(merged, "the task's SLURM options")


def with_job_settings(
    config: SlurmConfig, *, slurm_account: str | None, worker_init: str | None
) -> SlurmConfig:
    """``config`` with the submission's account and ``worker_init`` lines (module docstring)."""
    lines = (worker_init or "").splitlines()
    for line in lines:
        if line.strip().startswith("#SBATCH --account="):
            raise SlurmConfigError(
                "worker_init may not set '#SBATCH --account=': the SLURM account is set when the "
                "job is submitted (slurm_account)"
            )
    changes: dict[str, Any] = {"extra_lines": _unique([*config.extra_lines, *lines])}
    if slurm_account is not None:
        changes["account"] = slurm_account
    return _build({**config.model_dump(), **changes}, "the job's SLURM options")


def _set_options(options: BaseModel) -> dict[str, Any]:
    """The options set (not None) in a config-file section, ``mem`` renamed to mem_per_task_mb."""
    out = {k: v for k, v in options.model_dump().items() if v is not None}
    if "mem" in out:
        out["mem_per_task_mb"] = out.pop("mem")
    return out


def _meta_int(meta: Mapping[str, Any], key: str) -> int:
    value = meta[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise SlurmConfigError(f"meta.{key} must be an integer, not {value!r}") from None


def _unique(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(lines))


def _build(merged: dict[str, Any], what: str) -> SlurmConfig:
    try:
        return SlurmConfig.model_validate(merged)
    except ValidationError as exc:
        raise SlurmConfigError(f"{what} are invalid: {validation_message(exc)}") from None
