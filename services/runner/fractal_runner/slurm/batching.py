"""How many task calls go into one SLURM job, and how many of them run at once: the reference's
batching heuristics (§7.4, ``_batching.heuristics``), branch for branch.

Returns ``(tasks_per_job, parallel_tasks_per_job)``. Preconditions (SlurmHeuristicsError otherwise):
tasks_per_job and parallel_tasks_per_job both set or both unset (0 counts as unset, as in the
reference), cpus_per_task ≤ max_cpus_per_job, mem_per_task ≤ max_mem_per_job.

1. Both given: clamp parallel to tasks_per_job; parallel×cpus and parallel×mem over their target
   → warning, over their max → error; ceil(tot/tasks_per_job) over target_num_jobs → debug,
   over max_num_jobs → error; return them.
2. p = min(target_cpus // cpus, target_mem // mem), each 1 when the task alone exceeds the target;
   if ceil(tot/p) ≤ target_num_jobs → (p, p).
3. The same with the max limits; if ceil(tot/p) ≤ max_num_jobs → (p, p).
4. p from the max limits and tasks_per_job = ceil(tot / max_num_jobs): in-job queues.

A single call (not a map) always uses (1, 1), without these heuristics.
"""

import logging
import math
from dataclasses import dataclass

from fractal_runner.slurm.errors import SlurmHeuristicsError

__all__ = ["BatchingLimits", "batching_heuristics", "split_into_batches"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingLimits:
    """The six limits of the config file's ``batching_config`` (memory in MB)."""

    target_cpus_per_job: int
    max_cpus_per_job: int
    target_mem_per_job: int
    max_mem_per_job: int
    target_num_jobs: int
    max_num_jobs: int


def batching_heuristics(
    *,
    tot_tasks: int,
    tasks_per_job: int | None,
    parallel_tasks_per_job: int | None,
    cpus_per_task: int,
    mem_per_task: int,
    limits: BatchingLimits,
) -> tuple[int, int]:
    """``(tasks_per_job, parallel_tasks_per_job)`` for ``tot_tasks`` calls (module docstring)."""
    if bool(tasks_per_job) != bool(parallel_tasks_per_job):
        _fail(
            "tasks_per_job and parallel_tasks_per_job must be both set or both unset "
            f"(got tasks_per_job={tasks_per_job}, parallel_tasks_per_job={parallel_tasks_per_job})"
        )
    if cpus_per_task > limits.max_cpus_per_job:
        _fail(
            f"the task needs cpus_per_task={cpus_per_task} "
            f"but max_cpus_per_job={limits.max_cpus_per_job}"
        )
    if mem_per_task > limits.max_mem_per_job:
        _fail(
            f"the task needs mem_per_task={mem_per_task} MB "
            f"but max_mem_per_job={limits.max_mem_per_job} MB"
        )

    # Branch 1: both given.
    if tasks_per_job and parallel_tasks_per_job:
        if parallel_tasks_per_job > tasks_per_job:
            logger.warning("[heuristics] reducing parallel_tasks_per_job to %d", tasks_per_job)
            parallel_tasks_per_job = tasks_per_job
        cpus_per_job = parallel_tasks_per_job * cpus_per_task
        mem_per_job = parallel_tasks_per_job * mem_per_task
        _check(
            cpus_per_job,
            "cpus_per_job",
            limits.target_cpus_per_job,
            limits.max_cpus_per_job,
            logging.WARNING,
        )
        _check(
            mem_per_job,
            "mem_per_job",
            limits.target_mem_per_job,
            limits.max_mem_per_job,
            logging.WARNING,
        )
        num_jobs = math.ceil(tot_tasks / tasks_per_job)
        _check(num_jobs, "num_jobs", limits.target_num_jobs, limits.max_num_jobs, logging.DEBUG)
        return tasks_per_job, parallel_tasks_per_job

    # Branch 2: the target limits.
    parallel = _parallel_within(
        cpus_per_task, mem_per_task, limits.target_cpus_per_job, limits.target_mem_per_job
    )
    if math.ceil(tot_tasks / parallel) <= limits.target_num_jobs:
        return parallel, parallel

    # Branch 3: the max limits.
    parallel = _parallel_within(
        cpus_per_task, mem_per_task, limits.max_cpus_per_job, limits.max_mem_per_job
    )
    if math.ceil(tot_tasks / parallel) <= limits.max_num_jobs:
        return parallel, parallel

    # Branch 4: the max limits, and several calls in sequence in each job (in-job queues).
    return math.ceil(tot_tasks / limits.max_num_jobs), parallel


def split_into_batches(n_calls: int, tasks_per_job: int) -> list[range]:
    """The call indices of each SLURM job: runs of ``tasks_per_job`` (the last may be shorter)."""
    if tasks_per_job < 1:
        raise ValueError("tasks_per_job must be at least 1")
    return [range(i, min(i + tasks_per_job, n_calls)) for i in range(0, n_calls, tasks_per_job)]


def _parallel_within(cpus: int, mem: int, cpus_limit: int, mem_limit: int) -> int:
    by_cpus = 1 if cpus > cpus_limit else cpus_limit // cpus
    by_mem = 1 if mem > mem_limit else mem_limit // mem
    return min(by_cpus, by_mem)


def _check(value: int, name: str, target: int, top: int, over_target_level: int) -> None:
    if value > target:
        logger.log(
            over_target_level, "[heuristics] %s=%d exceeds the target %d", name, value, target
        )
    if value > top:
        _fail(f"the batching gives {name}={value} but the limit is {top}")


def _fail(message: str) -> None:
    logger.error("[heuristics] %s", message)
    raise SlurmHeuristicsError(message)
