"""SlurmSudoExecutor on the real cluster, as the non-root cluster user: results identical to the
local executor's, failures, memory, stop."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slurm_cluster_env import CLUSTER_USER, RUNNER_SOURCE, WORKER_PYTHON

from fractal_grpc.db import make_engine, make_sessionmaker
from fractal_runner.run_store import RunStore
from fractal_runner.slurm.job_records import SlurmJobRecords
from fractal_runner.slurm.poller import SlurmPoller
from fractal_runner.slurm.scheduler import SchedulerCalls, SlurmCommands
from fractal_runner.slurm.sudo_executor import SlurmSudoExecutor
from fractal_runner.taskproc.calls import (
    JobExecutionError,
    JobStopped,
    TaskCall,
    TaskExecutionError,
)
from fractal_runner.taskproc.layout import CallPaths, parallel_prefix
from fractal_runner.taskproc.local_executor import LocalExecutor

DEADLINE = 180
SUBFOLDER = "1_my_task"
CONFIG = {
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
TASK = """\
import json, sys, time
args = json.load(open(sys.argv[sys.argv.index("--args-json") + 1]))
out = sys.argv[sys.argv.index("--out-json") + 1]
url = args["zarr_url"]
print("working on", url)
if url.endswith("bad"):
    print("this image is broken", file=sys.stderr)
    sys.exit(2)
if url.endswith("hog"):
    hog = b"x" * (600 * 2**20)
    time.sleep(30)  # SLURM samples memory every second
if url.endswith("sleep"):
    time.sleep(300)
n = int(url.rsplit("_", 1)[-1]) if "_" in url else 0
json.dump({"image_list_updates": [{"zarr_url": url, "attributes": {"n": n * n}}]}, open(out, "w"))
"""


@pytest.fixture
def dirs(job_dir: Path) -> Iterator[tuple[Path, Path]]:
    """(the runner's local job folder, the user's folder): root's, and the cluster user's."""
    local = Path(tempfile.mkdtemp(prefix="fractal-slurm-local-", dir="/tmp"))
    local.chmod(0o755)
    (local / SUBFOLDER).mkdir(mode=0o755)
    (local / "task.py").write_text(TASK)
    (local / "task.py").chmod(0o644)
    (local / "slurm.json").write_text(json.dumps(CONFIG))
    yield local, job_dir / "user"
    shutil.rmtree(local, ignore_errors=True)


def _executor(
    dirs: tuple[Path, Path], calls: SchedulerCalls, **options: str
) -> tuple[SlurmSudoExecutor, SlurmPoller]:
    local, user = dirs
    entry = pwd.getpwnam(CLUSTER_USER)
    user.mkdir()
    os.chown(user, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
    commands = SlurmCommands(
        cluster="fractal", user=CLUSTER_USER, calls=calls, sudo_user=CLUSTER_USER
    )
    poller = SlurmPoller(commands, interval=0.5)
    executor = SlurmSudoExecutor(
        commands=commands,
        poller=poller,
        config_file=local / "slurm.json",
        local_dir=local,
        user_dir=user,
        worker_python=WORKER_PYTHON,
        worker_env={"PYTHONPATH": RUNNER_SOURCE},
        **options,
    )
    return executor, poller


def _calls(base: Path, urls: list[str]) -> list[TaskCall]:
    command = f"/usr/bin/python3 {base / 'task.py'}"
    return [
        TaskCall(
            command, {"zarr_url": url}, CallPaths.build(base, SUBFOLDER, parallel_prefix(1, i))
        )
        for i, url in enumerate(urls)
    ]


async def test_results_match_the_local_executor(dirs, calls: SchedulerCalls, tmp_path: Path):
    urls = [f"/z/img_{i}" for i in range(7)]
    executor, poller = _executor(dirs, calls, job_comment="fractal:run=r1")
    try:
        got = await asyncio.wait_for(
            executor.run_calls(
                _calls(dirs[0], urls), meta={"tasks_per_job": 3, "parallel_tasks_per_job": 2}
            ),
            DEADLINE,
        )
    finally:
        await poller.close()
    (tmp_path / SUBFOLDER).mkdir()
    shutil.copy(dirs[0] / "task.py", tmp_path / "task.py")
    expected = await LocalExecutor().run_calls(_calls(tmp_path, urls), concurrency=2)
    assert got == expected
    assert got[3] == {"image_list_updates": [{"zarr_url": "/z/img_3", "attributes": {"n": 9}}]}
    assert calls.count("sbatch") == 3  # ceil(7 / tasks_per_job=3)
    assert calls.count("squeue") == poller.rounds
    local_sub = dirs[0] / SUBFOLDER
    for i in range(7):  # the task files came back to the runner's folder
        assert f"working on /z/img_{i}" in (local_sub / f"{parallel_prefix(1, i)}.log").read_text()
    scripts = sorted(p.name for p in local_sub.glob("*.sbatch"))
    assert scripts == [f"1_batch_{n:06d}_slurm_submit.sbatch" for n in range(3)]
    assert "#SBATCH --ntasks=2\n" in (local_sub / scripts[0]).read_text()
    comments = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(executor.submitted_job_ids), "--format=Comment"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert comments == ["fractal:run=r1"] * 3  # the tag to find the jobs again


async def test_a_failing_task_fails_with_its_log(dirs, calls: SchedulerCalls):
    executor, poller = _executor(dirs, calls)
    try:
        with pytest.raises(TaskExecutionError) as info:
            await asyncio.wait_for(
                executor.run_calls(_calls(dirs[0], ["/z/img_1", "/z/bad", "/z/img_2"])), DEADLINE
            )
    finally:
        await poller.close()
    assert info.value.message.startswith("Task process exited with code 2.")
    assert "this image is broken" in info.value.log


async def test_a_task_over_its_memory_fails_with_slurm_s_reason(dirs, calls: SchedulerCalls):
    executor, poller = _executor(dirs, calls)
    try:
        with pytest.raises(JobExecutionError) as info:
            await asyncio.wait_for(executor.run_calls(_calls(dirs[0], ["/z/hog"])), DEADLINE)
    finally:
        await poller.close()
    message = info.value.message
    assert "ran out of memory: a task used more than its memory limit (mem)" in message
    assert "exceeded memory limit" in message  # the tail of SLURM's stderr


async def test_stop_scancels_the_jobs(dirs, calls: SchedulerCalls):
    executor, poller = _executor(dirs, calls)
    try:
        run = asyncio.create_task(executor.run_calls(_calls(dirs[0], ["/z/sleep", "/z/img_1"])))
        for _ in range(DEADLINE * 10):
            listing = subprocess.run(
                ["squeue", "-h", "-u", CLUSTER_USER, "-t", "RUNNING", "-o", "%i"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if listing and (dirs[0] / SUBFOLDER / "1_batch_000000_slurm_submit.sbatch").exists():
                break
            await asyncio.sleep(0.1)
        await executor.cancel()
        with pytest.raises(JobStopped):
            await asyncio.wait_for(run, DEADLINE)
    finally:
        await poller.close()
    assert calls.count("scancel") == 1
    (job_id,) = executor.submitted_job_ids  # both calls in one job
    states = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "--format=State"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert len(states) == 1 and states[0].startswith("CANCELLED"), states
    with pytest.raises(JobStopped):
        await executor.run_calls(_calls(dirs[0], ["/z/img_1"]))


async def test_a_job_scancelled_from_outside_fails_with_slurm_s_reason(dirs, calls: SchedulerCalls):
    executor, poller = _executor(dirs, calls)
    try:
        run = asyncio.create_task(executor.run_calls(_calls(dirs[0], ["/z/sleep"])))
        for _ in range(DEADLINE * 10):
            if executor.submitted_job_ids and _running(executor.submitted_job_ids[0]):
                break
            await asyncio.sleep(0.1)
        subprocess.run(["scancel", executor.submitted_job_ids[0]], check=True)
        with pytest.raises(JobExecutionError) as info:
            await asyncio.wait_for(run, DEADLINE)
    finally:
        await poller.close()
    assert not isinstance(info.value, JobStopped)
    (job_id,) = executor.submitted_job_ids
    assert info.value.message.startswith(
        f"SLURM job {job_id} was cancelled (scancel, or stopped by an administrator)."
    )
    assert "SLURM stderr (tail):" in info.value.message


def _running(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout
    return out.strip() == "RUNNING"


# --- records of the SLURM jobs (restart reconciliation) ---------------------------------------


@pytest.fixture
async def records(database_url: str) -> AsyncIterator[tuple[SlurmJobRecords, int]]:
    """Records of a run of its own in the runner schema (finished at the end, so that no
    runner of the session ever resumes it)."""
    engine = make_engine(database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    store = RunStore(sessions)
    job_id = secrets.randbelow(2**40) + 2**40
    assert await store.claim(job_id, create=True)
    try:
        yield SlurmJobRecords(sessions, deployment="t", cluster="fractal"), job_id
    finally:
        await store.finish(job_id)
        await engine.dispose()


def _recorded_executor(
    dirs: tuple[Path, Path], calls: SchedulerCalls, records: tuple[SlurmJobRecords, int]
) -> tuple[SlurmSudoExecutor, SlurmPoller]:
    executor, poller = _executor(dirs, calls)
    executor.records, executor.fractal_job_id = records
    poller.lost_after = 1.0
    return executor, poller


async def _lost_job(
    records: tuple[SlurmJobRecords, int], urls: list[str], *, generation: int
) -> None:
    """A record of a SLURM job for the calls of ``urls`` that SLURM has never heard of."""
    store, job_id = records
    stems = [parallel_prefix(1, i) for i in range(len(urls))]
    record = await store.intend(
        job_id=job_id,
        subfolder=SUBFOLDER,
        slurm_prefix="1_batch_000000",
        calls=stems,
        slurm_user=CLUSTER_USER,
        generation=generation,
    )
    await store.submitted(record.id, "987654321")


async def test_a_recorded_job_unknown_to_slurm_is_submitted_once_more(
    dirs, calls: SchedulerCalls, records
):
    urls = ["/z/img_1", "/z/img_2"]
    await _lost_job(records, urls, generation=0)
    executor, poller = _recorded_executor(dirs, calls, records)
    try:
        got = await asyncio.wait_for(executor.run_calls(_calls(dirs[0], urls)), DEADLINE)
    finally:
        await poller.close()
    assert got[1] == {"image_list_updates": [{"zarr_url": "/z/img_2", "attributes": {"n": 4}}]}
    assert calls.count("sbatch") == 1  # the lost job's calls, once more, in one job
    store, job_id = records
    assert await store.count(job_id) == 2
    (current,) = await store.for_task(job_id, SUBFOLDER)  # the lost one is abandoned
    assert current.generation == 1 and current.state == "ended"
    assert current.slurm_job_id == executor.submitted_job_ids[0]


async def test_a_resubmitted_job_unknown_to_slurm_fails_with_a_reason(
    dirs, calls: SchedulerCalls, records
):
    await _lost_job(records, ["/z/img_1"], generation=1)
    executor, poller = _recorded_executor(dirs, calls, records)
    try:
        with pytest.raises(JobExecutionError) as info:
            await asyncio.wait_for(executor.run_calls(_calls(dirs[0], ["/z/img_1"])), DEADLINE)
    finally:
        await poller.close()
    assert info.value.message.startswith(
        "SLURM job 987654321 is unknown to SLURM (neither squeue nor sacct lists it). "
        "Its task calls were already submitted a second time."
    )
    assert calls.count("sbatch") == 0


async def test_a_job_recorded_but_never_submitted_is_submitted(
    dirs, calls: SchedulerCalls, records
):
    """The runner died between recording a job and its sbatch: the tag is looked up first
    (squeue, then sacct), and only then are its calls submitted."""
    store, job_id = records
    await store.intend(
        job_id=job_id,
        subfolder=SUBFOLDER,
        slurm_prefix="1_batch_000000",
        calls=[parallel_prefix(1, 0)],
        slurm_user=CLUSTER_USER,
    )
    executor, poller = _recorded_executor(dirs, calls, records)
    try:
        got = await asyncio.wait_for(executor.run_calls(_calls(dirs[0], ["/z/img_3"])), DEADLINE)
    finally:
        await poller.close()
    assert got == [{"image_list_updates": [{"zarr_url": "/z/img_3", "attributes": {"n": 9}}]}]
    assert calls.count("sbatch") == 1
    assert calls.count("sacct") >= 1  # the lookup by tag
    (current,) = await store.for_task(job_id, SUBFOLDER)
    assert current.slurm_prefix == "1_batch_000001"  # a new job, not the abandoned record


async def test_200_calls_in_several_jobs_with_in_job_queues(dirs, calls: SchedulerCalls, tmp_path):
    """tasks_per_job 50 and parallel_tasks_per_job 4: 4 SLURM jobs, each running its 50 calls 4
    at a time (an in-job queue of srun steps); the outputs are the local executor's."""
    urls = [f"/z/img_{i}" for i in range(200)]
    executor, poller = _executor(dirs, calls)
    meta = {"tasks_per_job": 50, "parallel_tasks_per_job": 4, "mem": "150M"}
    try:
        got = await asyncio.wait_for(executor.run_calls(_calls(dirs[0], urls), meta=meta), 600)
    finally:
        await poller.close()
    (tmp_path / SUBFOLDER).mkdir()
    shutil.copy(dirs[0] / "task.py", tmp_path / "task.py")
    expected = await LocalExecutor().run_calls(_calls(tmp_path, urls), concurrency=4)
    assert got == expected
    assert got[199] == {
        "image_list_updates": [{"zarr_url": "/z/img_199", "attributes": {"n": 199 * 199}}]
    }
    assert calls.count("sbatch") == 4
    assert calls.count("squeue") == poller.rounds
    script = (dirs[0] / SUBFOLDER / "1_batch_000000_slurm_submit.sbatch").read_text()
    assert "#SBATCH --ntasks=4\n" in script and "#SBATCH --mem=600M\n" in script
    assert script.count("srun --ntasks=1") == 50
