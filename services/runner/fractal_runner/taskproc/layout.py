"""Names and folders of a job's working directory (reference §5.1 step 10, §5.2 step 6, §5.9).

The job folder's own name is decided in ``fractal_grpc.jobfolder`` (api records it; this package
is also imported by the SLURM worker on compute nodes, which has no ``fractal_grpc``).

{base}/proj_v2_0000001_wf_0000002_job_0000003_20240101_120000/
    workflow.log
    0_create_ome_zarr_compound/
        0.args.json  0.metadiff.json  0.log                     (single call)
        0_par_0000000.args.json  0_par_0000000.metadiff.json ... (parallel items)
        0.done.json  0_par_0000000.done.json ...   (completed calls; not in the reference)
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FOLDER_MODE",
    "CallPaths",
    "create_job_folders",
    "parallel_prefix",
    "single_prefix",
    "task_slug",
    "task_subfolder",
]

FOLDER_MODE = 0o755


#: Every ASCII punctuation and whitespace character becomes "_" in a slug.
_TO_UNDERSCORE = str.maketrans(dict.fromkeys(string.punctuation + string.whitespace, "_"))


def task_slug(name: str) -> str:
    """The reference's ``sanitize_string``: lowercase, and every character of Python's
    ``string.punctuation`` and ``string.whitespace`` replaced by ``_`` (other characters, also
    non-ASCII letters, are kept)."""
    return name.lower().translate(_TO_UNDERSCORE)


def task_subfolder(order: int, task_name: str) -> str:
    """`{order}_{slug}`: the folder of one workflow task inside the job folder."""
    return f"{order}_{task_slug(task_name)}"


def single_prefix(order: int) -> str:
    """File prefix of a non-parallel call (or the init call of a compound task)."""
    return f"{order}"


def parallel_prefix(order: int, index: int) -> str:
    """File prefix of the `index`-th parallel call: `{order}_par_{index:07d}`."""
    return f"{order}_par_{index:07d}"


@dataclass(frozen=True, slots=True)
class CallPaths:
    """The files of one task call: the reference's three, and the runner's record of the
    call's completion (``taskproc.completions``)."""

    args_json: Path
    out_json: Path
    log: Path
    done: Path

    @classmethod
    def build(cls, job_dir: Path, subfolder: str, prefix: str) -> CallPaths:
        folder = job_dir / subfolder
        return cls(
            args_json=folder / f"{prefix}.args.json",
            out_json=folder / f"{prefix}.metadiff.json",
            log=folder / f"{prefix}.log",
            done=folder / f"{prefix}.done.json",
        )


def _mkdir(path: Path, *, parents: bool = False, exist_ok: bool = False) -> None:
    if exist_ok and path.is_dir():
        return
    path.mkdir(mode=FOLDER_MODE, parents=parents, exist_ok=False)
    # mkdir's mode is filtered by the umask; chmod gives exactly 0755 without touching the
    # process-wide umask (which the reference sets to 0, a race for a multi-job process).
    os.chmod(path, FOLDER_MODE)


def create_job_folders(
    job_dir: Path, tasks_slice: Iterable[tuple[int, str]], *, resume: bool = False
) -> dict[int, Path]:
    """Create the job folder and one subfolder per `(order, task name)`, all with mode 0755.

    Missing parents of `job_dir` are created too (with default permissions). Raises
    FileExistsError if `job_dir` already exists (a job folder is never reused by another job),
    unless `resume`: then the job's own folder is completed with what is missing.
    Returns the subfolder of each order.
    """
    _mkdir(job_dir, parents=True, exist_ok=resume)
    subfolders: dict[int, Path] = {}
    for order, name in tasks_slice:
        subfolder = job_dir / task_subfolder(order, name)
        _mkdir(subfolder, exist_ok=resume)
        subfolders[order] = subfolder
    return subfolders
