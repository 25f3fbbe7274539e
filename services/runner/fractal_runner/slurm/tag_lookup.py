"""Find SLURM jobs by their tag (``--comment``) when the runner does not know their ids: the
runner died between recording a job and storing the id sbatch gave back.

One ``squeue`` of the user's jobs (it lists the pending and running ones with their comments),
then, for the tags still missing, one ``sacct`` of the user's jobs since the earliest record.
A failed call raises :class:`SchedulerCallFailed`: "unknown, ask again" — never "not found",
which would submit the calls a second time.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from fractal_runner.slurm.scheduler import SchedulerCallFailed, SlurmCommands

__all__ = ["find_jobs_by_tag"]

#: sacct looks back this much before the earliest record (clock skew, accounting delays).
LOOKBACK_SECONDS = 300


async def find_jobs_by_tag(
    commands: SlurmCommands, tags: Collection[str], *, since_epoch: float
) -> dict[str, str]:
    """``{tag: slurm_job_id}`` for the tags SLURM knows; tags it does not know are left out."""
    wanted = set(tags)
    if not wanted:
        return {}
    result = await commands.run(
        ["squeue", "--noheader", f"--user={commands.user}", "--format=%i|%k"], n_ids=len(wanted)
    )
    if result.returncode != 0:
        raise SchedulerCallFailed(f"squeue exited {result.returncode}: {result.stderr[:500]}")
    found = _by_tag(result.stdout, wanted)
    missing = wanted - set(found)
    if not missing:
        return found
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since_epoch - LOOKBACK_SECONDS))
    result = await commands.run(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--user={commands.user}",
            f"--starttime={start}",
            "--format=JobID,Comment",
        ],
        n_ids=len(missing),
    )
    if result.returncode != 0:
        raise SchedulerCallFailed(f"sacct exited {result.returncode}: {result.stderr[:500]}")
    found.update(_by_tag(result.stdout, missing))
    return found


def _by_tag(text: str, wanted: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, comment = line.strip().partition("|")
        if sep and comment in wanted and job_id.isdigit():
            found.setdefault(comment, job_id)
    return found
