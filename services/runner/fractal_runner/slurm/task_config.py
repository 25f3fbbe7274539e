"""The SLURM options of one task part: the reference's per-task merge (§7.3, ``get_slurm_config``).

Increasing priority:

1. ``default_slurm_config`` (``mem`` becomes ``mem_per_task_mb``), the six batching limits and
   ``user_local_exports`` of the config file;
2. if the task meta has a truthy ``needs_gpu``: every key set in ``gpu_slurm_config``;
3. the task meta (``meta_parallel`` or ``meta_non_parallel``, the caller picks): ``cpus_per_task``
   (int), ``mem`` (parsed), ``time``, ``gres``, ``gpus``, ``constraint`` (each when present and not
   None), ``extra_lines`` (appended to the file's), ``tasks_per_job`` and
   ``parallel_tasks_per_job``. ``account`` in meta is refused: the account comes only from the
   job's ``slurm_account``; so is an ``extra_lines`` line that sets it (:func:`sets_account`).
   ``partition`` cannot be set per task.
4. ``job_name`` = the task name with spaces replaced by ``_``.

Then :func:`with_job_settings` adds what the submission brings: ``slurm_account`` and the
``worker_init`` lines (appended to ``extra_lines``; a line that sets the account is refused).

Departures, on purpose: ``extra_lines`` are deduplicated keeping their order (the reference goes
through a ``set``, so the order of the lines in the script was arbitrary), and a ``worker_init``
line already present is not added twice (the reference then failed the job with "contains
repetitions" at its first submission, e.g. for a worker_init with two blank lines). ``needs_gpu``
without a ``gpu_slurm_config`` is a SlurmConfigError with a clear message (an AttributeError in the
reference). The reference refused only a worker_init line starting with ``#SBATCH --account=``;
here every spelling of the account option is refused (``-A x``, ``--account x``, ``--acco=x``),
in worker_init and in the meta's ``extra_lines`` (both come from the user; the config file's
``extra_lines`` come from the admin and may set it). All errors are SlurmConfigError with a
message for the user.
"""

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from fractal_runner.slurm.config_file import SlurmConfigFile, validation_message
from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.memory import parse_mem_mb

__all__ = ["SlurmConfig", "sets_account", "task_slurm_config", "with_job_settings"]

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

    @field_validator(
        "partition",
        "job_name",
        "constraint",
        "gres",
        "gpus",
        "time",
        "account",
        "extra_lines",
        "pre_submission_commands",
    )
    @classmethod
    def _one_line_each(cls, value: str | tuple[str, ...] | None) -> object:
        """Each is one line of a script: a line break would add a line of its own."""
        for text in (value,) if isinstance(value, str) else value or ():
            if "\n" in text or "\r" in text:
                raise ValueError(f"may not contain a line break: {text!r}")
        return value


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
    _refuse_account_lines(meta_lines, "meta.extra_lines")
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
    _refuse_account_lines(lines, "worker_init")
    changes: dict[str, Any] = {"extra_lines": _unique([*config.extra_lines, *lines])}
    if slurm_account is not None:
        changes["account"] = slurm_account
    return _build({**config.model_dump(), **changes}, "the job's SLURM options")


#: A cluster of sbatch's short flags without argument, then -A (``-A``, ``-vA``, ``-HvAlab``).
_SHORT_ACCOUNT = re.compile(r"-[hHkOQsvVW]*A")


def sets_account(line: str) -> bool:
    """Whether ``line`` is an ``#SBATCH`` directive that sets the SLURM account, in any of
    sbatch's spellings: ``-A x``, ``-Ax``, ``-vA x`` (after flags without argument),
    ``--account=x``, ``--account x``, or an abbreviation of the long option (``--acco=x``:
    sbatch takes unambiguous prefixes)."""
    words = line.split()
    if not words or words[0] != "#SBATCH":
        return False
    for word in words[1:]:
        if _SHORT_ACCOUNT.match(word):
            return True
        name = word[2:].split("=", 1)[0] if word.startswith("--") else ""
        if len(name) >= 2 and "account".startswith(name):
            return True
    return False


def _refuse_account_lines(lines: Iterable[str], where: str) -> None:
    for line in lines:
        if sets_account(line):
            raise SlurmConfigError(
                f"{where} may not set the SLURM account ({line.strip()!r}): the account is set "
                "when the job is submitted (slurm_account)"
            )


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
