"""Reading squeue/sacct output, and the reason given for a job that ended without its output."""

import pytest

from fractal_runner.slurm.job_end import (
    UNKNOWN,
    JobEnd,
    StepEnd,
    describe_job_end,
    parse_sacct,
    parse_squeue,
)


def test_parse_squeue():
    text = "12|RUNNING\n13|PENDING\n\n14_3|COMPLETING\ngarbage\n"
    assert parse_squeue(text) == {"12": "RUNNING", "13": "PENDING", "14_3": "COMPLETING"}


def test_parse_sacct_with_steps():
    text = (
        "3|oomjob.sh|COMPLETED|0:0\n"
        "3.batch|batch|COMPLETED|0:0\n"
        "3.0|1_par_0000000|CANCELLED by 0|0:9\n"
        "4|x|FAILED|3:0\n"
        "5.batch|batch|RUNNING|0:0\n"  # the job's own row is missing: not known yet
        "short|row\n"
    )
    assert parse_sacct(text) == {
        "3": JobEnd(
            "3",
            "COMPLETED",
            0,
            0,
            (
                StepEnd("batch", "batch", "COMPLETED", 0, 0),
                StepEnd("0", "1_par_0000000", "CANCELLED", 0, 9),
            ),
        ),
        "4": JobEnd("4", "FAILED", 3, 0),
    }


STEP_OOM = StepEnd("0", "1_par_0000001", "CANCELLED", 0, 9)
STEP_FAILED = StepEnd("1", "1_par_0000002", "FAILED", 0, 9)
KILLED_0 = (
    "slurmstepd-vm: error: StepId=7.0 exceeded memory limit (637521920 > 104857600), being killed"
)


@pytest.mark.parametrize(
    ("end", "step_name", "stderr", "reason"),
    [
        (JobEnd("7", "OUT_OF_MEMORY"), None, "", "ran out of memory"),
        (JobEnd("7", "OUT_OF_MEMORY"), None, "", "(mem). SLURM: OUT_OF_MEMORY."),
        (
            JobEnd("7", "COMPLETED", steps=(StepEnd("0", "s", "OUT_OF_MEMORY", 0, 9),)),
            "s",
            "",
            "a task used more than its memory limit (mem). SLURM: OUT_OF_MEMORY.",
        ),
        (
            JobEnd("7", "FAILED", 0, 9),
            None,
            "error: StepId=7.batch exceeded memory limit (639127552 > 104857600), being killed",
            "ran out of memory: a task used more than its memory limit (mem). SLURM: FAILED, "
            'signal 9, slurmstepd: "exceeded memory limit".',
        ),
        (
            JobEnd("7", "COMPLETED", steps=(STEP_OOM, STEP_FAILED)),
            "1_par_0000001",
            KILLED_0,
            "ran out of memory: a task used more than its memory limit (mem). SLURM: CANCELLED, "
            'signal 9, slurmstepd: "exceeded memory limit".',
        ),
        (
            JobEnd("7", "COMPLETED", steps=(STEP_OOM, STEP_FAILED)),
            "1_par_0000002",
            KILLED_0,
            "failed (signal 9)",
        ),
        (JobEnd("7", "TIMEOUT"), None, "", "reached its time limit (time)"),
        (JobEnd("7", "CANCELLED"), None, "", "was cancelled"),
        (JobEnd("7", "COMPLETED", steps=(STEP_OOM,)), "1_par_0000001", "", "was cancelled"),
        (JobEnd("7", "NODE_FAIL"), None, "", "its compute node failed (NODE_FAIL)"),
        (JobEnd("7", "BOOT_FAIL"), None, "", "its compute node failed (BOOT_FAIL)"),
        (JobEnd("7", "PREEMPTED"), None, "", "was preempted"),
        (JobEnd("7", "DEADLINE"), None, "", "reached its deadline"),
        (JobEnd("7", "FAILED", 3, 0), None, "", "failed (exit code 3)"),
        (JobEnd("7", "FAILED", 0, 15), None, "", "failed (signal 15)"),
        (JobEnd("7", "COMPLETED", steps=(STEP_FAILED,)), "1_par_0000002", "", "failed (signal 9)"),
        (JobEnd("7", UNKNOWN), None, "", "is unknown to SLURM"),
        (JobEnd("7", "COMPLETED"), None, "", "ended (COMPLETED) without writing the task's output"),
    ],
)
def test_reasons(end, step_name, stderr, reason):
    text = describe_job_end(end, step_name=step_name, stderr_tail=stderr)
    assert text.startswith("SLURM job 7 ") and reason in text, text
