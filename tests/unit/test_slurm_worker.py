"""The SLURM worker's files and handshake, run as a process here (the cluster runs it in
tests/slurm/test_worker.py)."""

import json
import subprocess
import sys

from fractal_runner.slurm.worker import read_worker_file, versions, write_worker_file
from fractal_runner.taskproc.calls import TaskCall
from fractal_runner.taskproc.layout import CallPaths

WORKER = [sys.executable, "-m", "fractal_runner.slurm.worker"]


def test_versions_handshake_prints_json():
    out = subprocess.run([*WORKER, "--versions"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == versions()
    assert set(versions()) == {"python", "cloudpickle", "worker_protocol"}


def test_runs_a_call_and_writes_its_outcome_atomically(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "json.dump({'filters': {'attributes': {'x': 1}}}, open(out, 'w'))\n"
    )
    call = TaskCall(
        f"{sys.executable} {task}", {"zarr_url": "/z/a"}, CallPaths.build(tmp_path, ".", "0")
    )
    write_worker_file(tmp_path / "in.pickle", {"versions": versions(), "call": call})
    subprocess.run(
        [
            *WORKER,
            "--input-file",
            str(tmp_path / "in.pickle"),
            "--output-file",
            str(tmp_path / "out.pickle"),
        ],
        check=True,
    )
    outcome = read_worker_file(tmp_path / "out.pickle")
    assert outcome == {
        "versions": versions(),
        "status": "done",
        "output": {"filters": {"attributes": {"x": 1}}},
    }
    assert json.loads((tmp_path / "0.args.json").read_text()) == {"zarr_url": "/z/a"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_signal_is_a_job_error(tmp_path):
    call = TaskCall("/bin/sh -c 'kill -9 $$'", {}, CallPaths.build(tmp_path, ".", "0"))
    write_worker_file(tmp_path / "in.pickle", {"versions": versions(), "call": call})
    args = [
        "--input-file",
        str(tmp_path / "in.pickle"),
        "--output-file",
        str(tmp_path / "out.pickle"),
    ]
    subprocess.run([*WORKER, *args], check=True)
    outcome = read_worker_file(tmp_path / "out.pickle")
    assert outcome["status"] == "job_failed"
    assert outcome["message"].startswith(
        "Task process was terminated by signal SIGKILL (return code -9)."
    )


def test_an_unreadable_input_is_a_job_error(tmp_path):
    (tmp_path / "in.pickle").write_bytes(b"not a pickle")
    args = [
        "--input-file",
        str(tmp_path / "in.pickle"),
        "--output-file",
        str(tmp_path / "out.pickle"),
    ]
    subprocess.run([*WORKER, *args], check=True)
    outcome = read_worker_file(tmp_path / "out.pickle")
    assert outcome["status"] == "job_failed"
    assert "cannot read its input file" in outcome["message"]
