"""The worker module run by real SLURM jobs as the cluster user: the sbatch layout with an in-job
queue, the task contract, outcomes written atomically, the version handshake."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import subprocess
from pathlib import Path

from slurm_cluster_env import CLUSTER_USER, RUNNER_SOURCE, WORKER_PYTHON

from fractal_runner.slurm.config_file import parse_slurm_config
from fractal_runner.slurm.job_end import describe_job_end, parse_sacct
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SlurmCommands
from fractal_runner.slurm.script import JobCall, SlurmJobSpec, sbatch_script
from fractal_runner.slurm.task_config import task_slurm_config
from fractal_runner.slurm.worker import read_worker_file, versions, write_worker_file
from fractal_runner.taskproc.calls import TaskCall
from fractal_runner.taskproc.layout import CallPaths, parallel_prefix

DEADLINE = 120
CONFIG = parse_slurm_config(
    {
        "default_slurm_config": {"partition": "main", "cpus_per_task": 1, "mem": "60M"},
        "batching_config": {
            "target_cpus_per_job": 2,
            "max_cpus_per_job": 4,
            "target_mem_per_job": "1G",
            "max_mem_per_job": "2G",
            "target_num_jobs": 2,
            "max_num_jobs": 4,
        },
    }
)
TASK = """\
import json, sys
args = json.load(open(sys.argv[sys.argv.index("--args-json") + 1]))
out = sys.argv[sys.argv.index("--out-json") + 1]
print("working on", args["zarr_url"])
if args["zarr_url"].endswith("bad"):
    print("this image is broken", file=sys.stderr)
    sys.exit(2)
if args["zarr_url"].endswith("hog"):
    hog = b"x" * (600 * 2**20)  # over the 60 MB of the call: SLURM kills the step
    __import__("time").sleep(30)  # (it samples memory every second)
if not args["zarr_url"].endswith("silent"):
    json.dump({"image_list_updates": [{"zarr_url": args["zarr_url"]}]}, open(out, "w"))
"""


def _as_user(path: Path) -> None:
    entry = pwd.getpwnam(CLUSTER_USER)
    os.chown(path, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)


async def test_calls_of_one_job_with_an_in_job_queue(
    job_dir: Path, commands: SlurmCommands, poller: SlurmPoller
):
    (job_dir / "task.py").write_text(TASK)
    subfolder = job_dir / "1_my_task"
    subfolder.mkdir(mode=0o755)
    _as_user(subfolder)
    urls = ["/z/a", "/z/b", "/z/silent", "/z/bad", "/z/c", "/z/hog"]
    task = "/usr/bin/python3 " + str(job_dir / "task.py")
    commands_of = [task] * 4 + ["no-such-command-x", task]
    job_calls, outputs = [], []
    for i, (url, command) in enumerate(zip(urls, commands_of, strict=True)):
        prefix = parallel_prefix(1, i)
        call = TaskCall(command, {"zarr_url": url}, CallPaths.build(job_dir, "1_my_task", prefix))
        in_file, out_file = subfolder / f"{prefix}_in.pickle", subfolder / f"{prefix}_out.pickle"
        write_worker_file(in_file, {"versions": versions(), "call": call})
        job_calls.append(JobCall(prefix, str(in_file), str(out_file)))
        outputs.append(out_file)
    spec = SlurmJobSpec(
        config=task_slurm_config(CONFIG, None, task_name="my task"),
        calls=job_calls,
        parallel_tasks_per_job=2,
        working_dir=str(job_dir),
        stdout_file=str(subfolder / "1_batch_000000_slurm_%j.out"),
        stderr_file=str(subfolder / "1_batch_000000_slurm_%j.err"),
        worker_python=WORKER_PYTHON,
        worker_env={"PYTHONPATH": RUNNER_SOURCE},
    )
    script = subfolder / "1_batch_000000_slurm_submit.sbatch"
    script.write_text(sbatch_script(spec))

    job_id = await commands.sbatch(str(script))
    end = await asyncio.wait_for(poller.watch(job_id), DEADLINE)
    assert end.completed, (end, (subfolder / f"1_batch_000000_slurm_{job_id}.err").read_text())

    # the call over its memory left no outcome; SLURM's own account says why
    assert not outputs[5].exists()
    stderr = (subfolder / f"1_batch_000000_slurm_{job_id}.err").read_text()
    reason = describe_job_end(end, step_name=job_calls[5].step_name, stderr_tail=stderr)
    assert reason == (
        f"SLURM job {job_id} ran out of memory: a task used more than its memory limit (mem). "
        'SLURM: CANCELLED, signal 9, slurmstepd: "exceeded memory limit".'
    )
    assert "ran out of memory" not in describe_job_end(
        end, step_name=job_calls[3].step_name, stderr_tail=stderr
    )
    outputs, job_calls = outputs[:5], job_calls[:5]
    got = [read_worker_file(path) for path in outputs]
    assert [g["status"] for g in got] == ["done", "done", "done", "task_failed", "task_failed"]
    assert got[0]["output"] == {"image_list_updates": [{"zarr_url": "/z/a"}]}
    assert got[2]["output"] is None  # no out-json: no output
    assert got[3]["message"].startswith("Task process exited with code 2.")
    assert "this image is broken" in got[3]["log"] and "working on /z/bad" in got[3]["log"]
    assert 'Command "no-such-command-x" is not valid' in got[4]["message"]
    # the handshake: the node's Python may differ (a warning), the rest must not
    strict = {k: v for k, v in versions().items() if k != "python"}
    assert all({k: v for k, v in g["versions"].items() if k != "python"} == strict for g in got)
    # ran as the cluster user, through one srun step per call (named after the call)
    assert {pwd.getpwuid(p.stat().st_uid).pw_name for p in outputs} == {CLUSTER_USER}
    assert not list(subfolder.glob("*.tmp"))
    sacct = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "--format=JobID,JobName,State,ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    steps = parse_sacct(sacct)[job_id].steps
    names = sorted(s.name for s in steps if s.step_id.isdigit())
    assert names == [c.step_name for c in job_calls] + [parallel_prefix(1, 5)]
    assert "#SBATCH --ntasks=2\n" in script.read_text()


async def test_version_mismatch_is_a_job_error(
    job_dir: Path, commands: SlurmCommands, poller: SlurmPoller
):
    call = TaskCall("/bin/true", {}, CallPaths.build(job_dir, ".", "0"))
    in_file, out_file = job_dir / "0_in.pickle", job_dir / "0_out.pickle"
    write_worker_file(in_file, {"versions": {**versions(), "cloudpickle": "0.1"}, "call": call})
    spec = SlurmJobSpec(
        config=task_slurm_config(CONFIG, None, task_name="t"),
        calls=[JobCall("0", str(in_file), str(out_file))],
        parallel_tasks_per_job=1,
        working_dir=str(job_dir),
        stdout_file=str(job_dir / "0.out"),
        stderr_file=str(job_dir / "0.err"),
        worker_python=WORKER_PYTHON,
        worker_env={"PYTHONPATH": RUNNER_SOURCE},
    )
    (job_dir / "0.sbatch").write_text(sbatch_script(spec))
    end = await asyncio.wait_for(
        poller.watch(await commands.sbatch(str(job_dir / "0.sbatch"))), DEADLINE
    )
    assert end.completed
    outcome = read_worker_file(out_file)
    assert outcome["status"] == "job_failed"
    assert outcome["message"].startswith("Version mismatch between the runner and the SLURM worker")
    assert "cloudpickle 0.1 on the runner" in outcome["message"]
    assert not (job_dir / "0.args.json").exists()  # nothing of the call ran
