"""The name of a job's folder: the one place that decides it (reference §5.1 step 10).

api records it on the job (``working_dir``, shown to users as the reference does); the runner
creates the folder under that name and finds it again by job id (``find_job_folder``) when api
asks for the job's log or a download: api never reads the folder itself. The names of the
per-task subfolders inside it (``{order}_{sanitize_string(task name)}``) are decided by the
runner alone, in ``fractal_runner.taskproc.layout.task_subfolder`` (that package also runs on
SLURM compute nodes, without this library).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

__all__ = ["find_job_folder", "job_folder_name", "job_id_of"]

_NAME = re.compile(r"^proj_v2_\d{7,}_wf_\d{7,}_job_(\d{7,})_\d{8}_\d{6}$")


def job_folder_name(project_id: int, workflow_id: int, job_id: int, when: datetime) -> str:
    """`proj_v2_{pid:07d}_wf_{wid:07d}_job_{jid:07d}_{YYYYmmdd_HHMMSS}`."""
    return (
        f"proj_v2_{project_id:07d}_wf_{workflow_id:07d}_job_{job_id:07d}"
        f"_{when.strftime('%Y%m%d_%H%M%S')}"
    )


def job_id_of(name: str) -> int | None:
    """The job id in a job folder's name, or None for a name that is not one."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def find_job_folder(base_dir: Path, job_id: int) -> Path | None:
    """The folder of job ``job_id`` directly under ``base_dir``, or None.

    Only real directories count (a symlink is not followed out of the base directory)."""
    pattern = f"proj_v2_*_wf_*_job_{job_id:07d}_*"
    for path in sorted(base_dir.glob(pattern)):
        if job_id_of(path.name) == job_id and path.is_dir() and not path.is_symlink():
            return path
    return None
