"""The runner's task-process layer: job folder layout, task calls and the local executor."""

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
