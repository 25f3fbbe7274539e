"""The sbatch script of one SLURM job (reference §7.3, ``to_sbatch_preamble`` and the executors).

Layout: the shebang, then every ``#SBATCH`` line, then the other lines; an ``echo`` of the working
directory; one ``srun --ntasks=1 …`` per task call, each running our worker module on its input
file; a final ``wait``. The job asks for ``--ntasks=P`` (P = parallel_tasks_per_job, lowered to the
number of calls when there are fewer) and P × the per-task memory. With at most P calls every
srun runs in the background at once (``… &``); with more, the calls are dealt round-robin into P
background lanes ``( srun …; srun …; ) &``, each running its calls one after the other (the
in-job queue).

``#SBATCH`` lines, in order: partition, ntasks, cpus-per-task, mem, then job-name, constraint,
gres, gpus, time, account, comment when set, the ``#SBATCH`` extra lines, err, out and ``-D``.
Other lines: the remaining extra lines, then one ``export NAME={export_dir}/{value}`` per
``user_local_exports`` entry, then ``export NAME=VALUE`` for the worker's own environment
(``worker_env``, e.g. the PYTHONPATH of the runner's source).

Departures: the in-job queue is P lanes instead of one background srun per call left to wait for
a free slot (the reference's layout): every waiting srun is a client process charged to the batch
step, so a job of 250 calls had its batch step killed over its memory (~3 MB per waiting srun,
measured on the test cluster); lanes keep P srun clients alive whatever the number of calls,
which also spares slurmctld the retries of blocked step requests. Each srun step is named after
its call (``--job-name={step_name}``), so sacct tells which call a failed or killed step was; the
job may carry a ``--comment`` (our run/call tag); worker arguments are shell-quoted; a value with
a line break (which would inject script lines) is refused, and so are file paths with whitespace
in ``#SBATCH`` lines (sbatch does not unquote them).
"""

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.task_config import SlurmConfig

__all__ = [
    "SBATCH",
    "SHEBANG",
    "WORKER_MODULE",
    "JobCall",
    "SlurmJobSpec",
    "sbatch_script",
    "wrapper_script",
]

SBATCH = "#SBATCH"
SHEBANG = "#!/bin/sh"
WORKER_MODULE = "fractal_runner.slurm.worker"
_OPTIONAL = ("job_name", "constraint", "gres", "gpus", "time", "account")


@dataclass(frozen=True)
class JobCall:
    """One task call in a SLURM job: its step name and its worker's input and output files."""

    step_name: str
    input_file: str
    output_file: str


@dataclass(frozen=True)
class SlurmJobSpec:
    """Everything one SLURM job's script depends on (paths as the compute node sees them)."""

    config: SlurmConfig
    calls: Sequence[JobCall]
    parallel_tasks_per_job: int
    working_dir: str
    stdout_file: str
    stderr_file: str
    worker_python: str
    export_dir: str | None = None
    comment: str | None = None
    worker_env: Mapping[str, str] = field(default_factory=dict)


def sbatch_script(spec: SlurmJobSpec) -> str:
    """The text of the sbatch script for ``spec`` (layout in the module docstring)."""
    config = spec.config
    if not spec.calls:
        raise ValueError("a SLURM job needs at least one task call")
    if spec.parallel_tasks_per_job < 1:
        raise ValueError("parallel_tasks_per_job must be at least 1")
    parallel = min(spec.parallel_tasks_per_job, len(spec.calls))
    lines = [
        SHEBANG,
        _sbatch("partition", config.partition),
        _sbatch("ntasks", parallel),
        _sbatch("cpus-per-task", config.cpus_per_task),
        _sbatch("mem", f"{parallel * config.mem_per_task_mb}M"),
    ]
    for key in _OPTIONAL:
        value = getattr(config, key)
        if value is not None:
            lines.append(_sbatch(key.replace("_", "-"), value))
    if spec.comment is not None:
        lines.append(_sbatch("comment", spec.comment))
    for line in config.extra_lines:
        _one_line("extra_lines", line)
    lines.extend(sorted(config.extra_lines, key=lambda line: not line.startswith(SBATCH)))
    if config.user_local_exports:
        if spec.export_dir is None:
            raise ValueError("user_local_exports are set but no export_dir is given")
        for name, value in config.user_local_exports.items():
            lines.append(f"export {name}={shlex.quote(f'{spec.export_dir}/{value}')}")
    for name, value in spec.worker_env.items():
        if not name.isidentifier():
            raise ValueError(f"invalid environment variable name {name!r}")
        lines.append(f"export {name}={shlex.quote(_one_line(name, value))}")
    lines.append(_sbatch("err", _path(spec.stderr_file)))
    lines.append(_sbatch("out", _path(spec.stdout_file)))
    lines.append(f"{SBATCH} -D {_path(spec.working_dir)}")
    lines.sort(key=_script_order)  # stable: shebang, #SBATCH lines, then the others

    body = ["", 'echo "Working directory (pwd): `pwd`"', ""]
    steps = [_srun(spec, call) for call in spec.calls]
    if len(steps) <= parallel:  # all at once
        body.extend(f"{step} &" for step in steps)
    else:  # P lanes, each running its calls one after the other
        for lane in range(parallel):
            body.append("(")
            body.extend(f"  {step}" for step in steps[lane::parallel])
            body.append(") &")
    body.append("wait")
    return "\n".join(lines + body) + "\n"


def wrapper_script(pre_submission_commands: Sequence[str], script: str) -> str:
    """The slurm_ssh wrapper of one sbatch (reference §7.6): the config's
    ``pre_submission_commands``, then ``sbatch --parsable {script}``; run with ``bash``. It stops
    at the first command that fails (``set -e``), so a failed ``module load`` refuses the
    submission with that command's message instead of submitting without it."""
    lines = ["#!/bin/bash", "set -e"]
    lines.extend(
        _one_line("pre_submission_commands", command) for command in pre_submission_commands
    )
    lines.append(shlex.join(["sbatch", "--parsable", script]))
    return "\n".join(lines) + "\n"


def _srun(spec: SlurmJobSpec, call: JobCall) -> str:
    worker = shlex.join(
        [
            spec.worker_python,
            "-m",
            WORKER_MODULE,
            "--input-file",
            call.input_file,
            "--output-file",
            call.output_file,
        ]
    )
    return (
        "srun --ntasks=1 --cpus-per-task=$SLURM_CPUS_PER_TASK "
        f"--mem={spec.config.mem_per_task_mb}M --job-name={shlex.quote(call.step_name)} {worker}"
    )


def _sbatch(option: str, value: object) -> str:
    return f"{SBATCH} --{option}={_one_line(option, str(value))}"


def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise SlurmConfigError(f"{what} may not contain a line break: {value!r}")
    return value


def _path(path: str) -> str:
    if any(c.isspace() for c in path):
        raise ValueError(f"a path in an #SBATCH line may not contain whitespace: {path!r}")
    return path


def _script_order(line: str) -> int:
    if line == SHEBANG:
        return 0
    return 1 if line.startswith(SBATCH) else 2
