"""What SLURM says about finished jobs, and the reason we give the user (pure functions).

:func:`parse_squeue` and :func:`parse_sacct` read the outputs of
``squeue --noheader --format=%i|%T --jobs=…`` and
``sacct --noheader --parsable2 --jobs=… --format=JobID,JobName,State,ExitCode``.
:func:`describe_job_end` turns a job's final state into a clear sentence, replacing the
reference's "output pickle not found": OUT_OF_MEMORY, TIMEOUT, CANCELLED, NODE_FAIL, FAILED with
its exit code, and the step of the call when the job's own state does not say it.

Memory on clusters without cgroups: SLURM's jobacct_gather ``OverMemoryKill`` (deploy/local)
kills a step over its ``--mem`` with SIGKILL and reports it as FAILED / CANCELLED with signal 9,
not OUT_OF_MEMORY; slurmstepd then writes "exceeded memory limit" to the job's stderr. With the
stderr tail given, that is reported as out of memory too (for one call: the line of its step).
Either way the reason ends with what SLURM itself said ("SLURM: OUT_OF_MEMORY." or
'SLURM: FAILED, signal 9, slurmstepd: "exceeded memory limit".').
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "FINAL_STATES",
    "JobEnd",
    "StepEnd",
    "describe_job_end",
    "parse_sacct",
    "parse_squeue",
]

#: States after which a job never runs again (squeue/sacct spelling; "CANCELLED by 0" → CANCELLED).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
#: The job is unknown to both squeue and sacct (purged, or never accounted).
UNKNOWN = "UNKNOWN"
_MEMORY_MARKER = "exceeded memory limit"


@dataclass(frozen=True)
class StepEnd:
    step_id: str  # "batch", "extern", "0", "1", ...
    name: str
    state: str
    exit_code: int
    signal: int


@dataclass(frozen=True)
class JobEnd:
    """A finished job as SLURM reports it (state UNKNOWN: neither squeue nor sacct knows it)."""

    job_id: str
    state: str
    exit_code: int = 0
    signal: int = 0
    steps: tuple[StepEnd, ...] = field(default=())

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"


def parse_squeue(text: str) -> dict[str, str]:
    """``{job_id: state}`` from ``squeue --format=%i|%T`` lines (array tasks keep their id)."""
    listed = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id:
            listed[job_id] = state.strip()
    return listed


def parse_sacct(text: str) -> dict[str, JobEnd]:
    """``{job_id: JobEnd}`` from sacct's JobID|JobName|State|ExitCode rows, steps included.

    The state is the first word ("CANCELLED by 0" → CANCELLED); ExitCode is ``code:signal``.
    Jobs whose own row is missing are left out (sacct does not know them yet).
    """
    jobs: dict[str, tuple[str, int, int]] = {}
    steps: dict[str, list[StepEnd]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_step, name, state, exit_code = parts[0], parts[1], parts[2], parts[3]
        word = state.split()[0] if state.split() else ""
        code, _, sig = exit_code.partition(":")
        code_n, sig_n = _int(code), _int(sig)
        job_id, dot, step_id = job_step.partition(".")
        if dot:
            steps.setdefault(job_id, []).append(StepEnd(step_id, name, word, code_n, sig_n))
        else:
            jobs[job_id] = (word, code_n, sig_n)
    return {
        job_id: JobEnd(job_id, state, code, sig, tuple(steps.get(job_id, ())))
        for job_id, (state, code, sig) in jobs.items()
    }


def describe_job_end(end: JobEnd, *, step_name: str | None = None, stderr_tail: str = "") -> str:
    """Why a job (or the step of one call, ``step_name``) ended without its output."""
    step = next((s for s in end.steps if step_name is not None and s.name == step_name), None)
    subject = f"SLURM job {end.job_id}"
    if _over_memory(end, step, stderr_tail) or "OUT_OF_MEMORY" in (end.state, step and step.state):
        return (
            f"{subject} ran out of memory: a task used more than its memory limit (mem). "
            f"SLURM: {_memory_state(end, step)}."
        )
    if end.state == UNKNOWN:
        return f"{subject} is unknown to SLURM (neither squeue nor sacct lists it)."
    if end.state == "TIMEOUT":
        return f"{subject} reached its time limit (time) and was stopped by SLURM."
    if end.state == "CANCELLED" or (step and step.state == "CANCELLED"):
        return f"{subject} was cancelled (scancel, or stopped by an administrator)."
    if end.state in ("NODE_FAIL", "BOOT_FAIL"):
        return f"{subject} failed because its compute node failed ({end.state})."
    if end.state == "PREEMPTED":
        return f"{subject} was preempted by SLURM."
    if end.state == "DEADLINE":
        return f"{subject} reached its deadline."
    failed = step if step and step.state == "FAILED" else end
    if failed.state == "FAILED":
        how = f"signal {failed.signal}" if failed.signal else f"exit code {failed.exit_code}"
        return f"{subject} failed ({how})."
    return f"{subject} ended ({end.state}) without writing the task's output."


def _memory_state(end: JobEnd, step: StepEnd | None) -> str:
    """SLURM's own word for a job over its memory: OUT_OF_MEMORY (cgroup enforcement), or the
    state and signal OverMemoryKill leaves with slurmstepd's line in the job's stderr."""
    if "OUT_OF_MEMORY" in (end.state, step and step.state):
        return "OUT_OF_MEMORY"
    ended = step if step is not None else end
    killed = f", signal {ended.signal}" if ended.signal else ""
    return f'{ended.state}{killed}, slurmstepd: "{_MEMORY_MARKER}"'


def _over_memory(end: JobEnd, step: StepEnd | None, stderr: str) -> bool:
    """slurmstepd's "StepId=J.S exceeded memory limit" line, for the step when one is given."""
    if step is not None:
        return f"StepId={end.job_id}.{step.step_id} {_MEMORY_MARKER}" in stderr
    return _MEMORY_MARKER in stderr


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
