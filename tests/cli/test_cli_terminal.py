"""The progress display of `fractal job submit --watch` in a real terminal: a tmux pane,
captured while the job runs and after it ended."""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import FRACTAL, Cli

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"


@pytest.fixture
def tmux(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tmux server of this test's own (its own socket), killed at the end."""
    assert shutil.which("tmux"), "tmux is missing: `make test` installs it"
    socket = f"fractal-cli-{secrets.token_hex(4)}"

    def run(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", socket, *args], check=True, capture_output=True, text=True
        ).stdout

    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def test_submit_watch_draws_a_progress_bar_per_task(cli: Cli, tmp_path: Path, tmux) -> None:  # type: ignore[no-untyped-def]
    suffix = secrets.token_hex(3)
    pid = str(cli("--json", "project", "new", f"tty-{suffix}").json()["id"])
    zarr_dir = tmp_path / "zarr"
    did = str(cli("--json", "dataset", "new", pid, "ds", "--zarr-dir", str(zarr_dir)).json()["id"])
    for i in range(3):
        url = f"{zarr_dir}/p.zarr/A/0{i}/0"
        Path(url).mkdir(parents=True)
        cli("image", "add", pid, did, "--zarr-url", url)
    wid = str(cli("--json", "workflow", "new", pid, "wf").json()["id"])
    for name in ("first", "second"):
        task = cli(
            "--json",
            "task",
            "new",
            f"{name}-{suffix}",
            "--source",
            f"{name}-{suffix}",
            "--command-parallel",
            f"{sys.executable} {MOCK / 'generic_task_parallel.py'}",
        ).json()
        cli(
            "workflow",
            "add-task",
            pid,
            wid,
            "--task-id",
            str(task["id"]),
            "--args-parallel",
            '{"sleep_seconds": 2}',
        )
    script = tmp_path / "watch.sh"
    exports = "".join(
        f"export {k}={shlex.quote(v)}\n"
        for k, v in cli.env.items()
        if k.startswith(("FRACTAL_", "HOME", "PATH"))
    )
    script.write_text(
        f"{exports}{FRACTAL} job submit {pid} {wid} {did} --watch; echo EXIT=$?; sleep 60\n"
    )
    tmux("new-session", "-d", "-x", "120", "-y", "30", "bash", str(script))

    screens: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p")
        screens.append(screen)
        if "EXIT=" in screen:
            break
        time.sleep(0.25)
    final = screens[-1]
    print(final)  # shown with -s, and by pytest when the test fails
    assert "EXIT=0" in final, final
    lines = final.splitlines()
    job_line = next(line for line in lines if line.startswith("job ") and "submitted" in line)
    job_id = job_line.split()[1]
    # At the end: the phase, a full bar per task with its real calls (one per image), the
    # final state.
    assert f"job {job_id}: done" in final
    for name in ("first", "second"):
        row = next(line for line in lines if f"{name}-{suffix}" in line)
        assert "━" in row and "3/3" in row and "done" in row, row
    assert f"job {job_id} done" in final
    # While it ran: the job showed as running, the first task as running while the second was
    # still pending, and no task ever counted more calls than the dataset has images.
    during = [s for s in screens if f"first-{suffix}" in s and "EXIT=" not in s]
    assert during, "the display never showed the tasks while the job ran"
    assert any(f"job {job_id}: running" in s for s in during), during[-1]

    def row_of(screen: str, name: str) -> str:
        return next(line for line in screen.splitlines() if f"{name}-{suffix}" in line)

    assert any(
        "running" in row_of(s, "first") and "pending" in row_of(s, "second") for s in during
    ), during
    for s in screens:
        for name in ("first", "second"):
            if f"{name}-{suffix}" in s:
                counts = re.findall(r"(\d+)/(\d+)", row_of(s, name))
                assert all(int(d) <= int(t) == 3 for d, t in counts), row_of(s, name)
