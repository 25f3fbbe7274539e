"""The runner's task-process layer: job folder layout, task calls and the local executor.

The local executor and its config (pydantic, psutil, asyncio) are imported on first use, not
with the package: the SLURM worker (``fractal_runner.slurm.worker``) imports
``taskproc.calls`` once per task call on the compute node, and loading them there cost
~0.22 s of interpreter start per call (measured with ``python -X importtime``), most of a
small call's time.
"""

import importlib
from typing import TYPE_CHECKING, Any

from fractal_runner.taskproc.calls import (
    JobExecutionError,
    JobStopped,
    TaskCall,
    TaskExecutionError,
    read_task_output_file,
)
from fractal_runner.taskproc.layout import (
    CallPaths,
    create_job_folders,
    parallel_prefix,
    single_prefix,
    task_slug,
    task_subfolder,
)

if TYPE_CHECKING:
    from fractal_runner.taskproc.local_config import (
        LocalBackendConfig,
        LocalBackendConfigError,
        get_local_config,
    )
    from fractal_runner.taskproc.local_executor import LocalExecutor

__all__ = [
    "CallPaths",
    "JobExecutionError",
    "JobStopped",
    "LocalBackendConfig",
    "LocalBackendConfigError",
    "LocalExecutor",
    "TaskCall",
    "TaskExecutionError",
    "create_job_folders",
    "get_local_config",
    "parallel_prefix",
    "read_task_output_file",
    "single_prefix",
    "task_slug",
    "task_subfolder",
]

_LAZY = {
    "LocalBackendConfig": "local_config",
    "LocalBackendConfigError": "local_config",
    "get_local_config": "local_config",
    "LocalExecutor": "local_executor",
}


def __getattr__(name: str) -> Any:
    """The local executor's names, imported on first use (module docstring)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
