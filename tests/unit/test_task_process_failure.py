"""The one wording of a failed task process, shared by the local executor and the SLURM worker."""

from pathlib import Path

import pytest

from fractal_runner.taskproc.calls import task_process_failure

ARGV = ["/bin/task", "--args-json", "/j/a b.json"]
WHERE = "Command: /bin/task --args-json '/j/a b.json'\nLog file: /j/1.log"


@pytest.mark.parametrize(
    ("returncode", "first_line"),
    [
        (1, "Task process exited with code 1."),
        (137, "Task process exited with code 137."),
        (-9, "Task process was terminated by signal SIGKILL (return code -9)."),
        (-15, "Task process was terminated by signal SIGTERM (return code -15)."),
        (-200, "Task process was terminated by signal 200 (return code -200)."),
    ],
)
def test_wording(returncode: int, first_line: str) -> None:
    assert task_process_failure(returncode, ARGV, Path("/j/1.log")) == f"{first_line}\n{WHERE}"
