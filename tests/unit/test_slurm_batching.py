"""The reference's batching heuristics (§7.4), every branch and every error, table-driven."""

import logging

import pytest

from fractal_runner.slurm.batching import BatchingLimits, batching_heuristics, split_into_batches
from fractal_runner.slurm.errors import SlurmHeuristicsError

LIMITS = BatchingLimits(
    target_cpus_per_job=4,
    max_cpus_per_job=8,
    target_mem_per_job=400,
    max_mem_per_job=1000,
    target_num_jobs=2,
    max_num_jobs=4,
)

# (case, tot_tasks, tasks_per_job, parallel_tasks_per_job, cpus_per_task, mem_per_task, expected)
CASES = [
    # branch 1: both given
    ("given, within every limit", 10, 5, 2, 1, 100, (5, 2)),
    ("given, parallel clamped to tasks_per_job", 6, 3, 5, 1, 100, (3, 3)),
    ("given, cpus and mem over target (warning only)", 12, 6, 6, 1, 100, (6, 6)),
    ("given, num_jobs over target (debug only)", 4, 1, 1, 1, 100, (1, 1)),
    ("given, exactly the max limits", 32, 8, 8, 1, 125, (8, 8)),
    # 0 counts as unset: heuristics as for None
    ("zeros are unset", 8, 0, 0, 1, 100, (4, 4)),
    # branch 2: target limits
    ("target, cpus and mem both allow 4", 8, None, None, 1, 100, (4, 4)),
    ("target, memory-limited", 4, None, None, 1, 200, (2, 2)),
    ("target, cpu-limited", 3, None, None, 2, 50, (2, 2)),
    ("target, task alone over target cpus", 2, None, None, 5, 100, (1, 1)),
    ("target, task alone over target mem", 1, None, None, 1, 500, (1, 1)),
    ("target, no calls", 0, None, None, 1, 100, (4, 4)),
    # branch 3: max limits
    ("max, 12 calls", 12, None, None, 1, 100, (8, 8)),
    ("max, exactly max_num_jobs", 32, None, None, 1, 100, (8, 8)),
    ("max, task over target cpus", 3, None, None, 5, 100, (1, 1)),
    # branch 4: in-job queues
    ("queue, one job too many", 33, None, None, 1, 100, (9, 8)),
    ("queue, 200 calls", 200, None, None, 1, 100, (50, 8)),
    ("queue, 5-cpu tasks", 10, None, None, 5, 100, (3, 1)),
    ("queue, 600 MB tasks", 10, None, None, 1, 600, (3, 1)),
]


@pytest.mark.parametrize(("case", "tot", "tpj", "ptpj", "cpus", "mem", "expected"), CASES)
def test_heuristics(case, tot, tpj, ptpj, cpus, mem, expected):
    got = batching_heuristics(
        tot_tasks=tot,
        tasks_per_job=tpj,
        parallel_tasks_per_job=ptpj,
        cpus_per_task=cpus,
        mem_per_task=mem,
        limits=LIMITS,
    )
    assert got == expected, case


# (case, tot_tasks, tasks_per_job, parallel_tasks_per_job, cpus_per_task, mem_per_task, message)
ERRORS = [
    ("only tasks_per_job", 10, 2, None, 1, 100, "both set or both unset"),
    ("only parallel_tasks_per_job", 10, None, 2, 1, 100, "both set or both unset"),
    ("tasks_per_job set, parallel zero", 10, 3, 0, 1, 100, "both set or both unset"),
    ("task over max cpus", 10, None, None, 9, 100, "cpus_per_task=9 but max_cpus_per_job=8"),
    ("task over max mem", 10, None, None, 1, 1001, "mem_per_task=1001 MB but max_mem_per_job"),
    ("given, over max cpus", 9, 3, 3, 3, 100, "cpus_per_job=9 but the limit is 8"),
    ("given, over max mem", 9, 3, 3, 1, 400, "mem_per_job=1200 but the limit is 1000"),
    ("given, over max jobs", 5, 1, 1, 1, 100, "num_jobs=5 but the limit is 4"),
]


@pytest.mark.parametrize(("case", "tot", "tpj", "ptpj", "cpus", "mem", "message"), ERRORS)
def test_heuristics_errors(case, tot, tpj, ptpj, cpus, mem, message):
    with pytest.raises(SlurmHeuristicsError, match=message):
        batching_heuristics(
            tot_tasks=tot,
            tasks_per_job=tpj,
            parallel_tasks_per_job=ptpj,
            cpus_per_task=cpus,
            mem_per_task=mem,
            limits=LIMITS,
        )


def test_given_values_log_what_the_reference_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="fractal_runner.slurm.batching")
    batching_heuristics(
        tot_tasks=18,
        tasks_per_job=6,
        parallel_tasks_per_job=9,
        cpus_per_task=1,
        mem_per_task=100,
        limits=LIMITS,
    )
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "[heuristics] reducing parallel_tasks_per_job to 6") in levels
    assert (logging.WARNING, "[heuristics] cpus_per_job=6 exceeds the target 4") in levels
    assert (logging.WARNING, "[heuristics] mem_per_job=600 exceeds the target 400") in levels
    assert (logging.DEBUG, "[heuristics] num_jobs=3 exceeds the target 2") in levels


@pytest.mark.parametrize(
    ("n", "per_job", "expected"),
    [
        (0, 3, []),
        (5, 5, [range(0, 5)]),
        (7, 3, [range(0, 3), range(3, 6), range(6, 7)]),
        (3, 10, [range(0, 3)]),
    ],
)
def test_split_into_batches(n, per_job, expected):
    assert split_into_batches(n, per_job) == expected


def test_split_refuses_empty_batches():
    with pytest.raises(ValueError, match="at least 1"):
        split_into_batches(3, 0)
