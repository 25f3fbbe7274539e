"""The runner with FRACTAL_RUNNER_BACKEND=slurm_sudo against the real cluster, as the non-root
cluster user: the golden scenario (results identical to the local executor's golden test), a
task exiting non-zero, a stop during a run, and the submit-time checks of the backend."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from slurm_cluster_env import CLUSTER_USER, WORKER_PYTHON
from slurm_world import (
    JOB_TIMEOUT,
    World,
    config_changed,
    mock,
    new_world,
    run_golden_scenario,
    sacct_tagged,
    set_user,
    squeue_tags,
)

from fractal.v2 import (
    job_pb2,
    job_service_pb2,
)
from fractal_grpc.settings import RunnerSettings, SettingsError
from fractal_runner.app import RunnerApp
from helpers import ApiClient

MEMORY_HOG = Path(__file__).with_name("memory_hog_task.py")


@pytest.fixture
async def world(slurm_admin: ApiClient, slurm_runner: RunnerApp, job_dir: Path) -> World:
    """A user running as the cluster user, cache_dir and zarr_dir in the cluster user's folder."""
    user = await slurm_admin.new_user(verified=True)
    await set_user(slurm_admin, user, slurm_user=CLUSTER_USER, cache_dir=str(job_dir / "cache"))
    subprocess.run(["sudo", "-u", CLUSTER_USER, "mkdir", "-p", str(job_dir / "cache")], check=True)
    return await new_world(user, str(job_dir / "zarr"))


async def test_golden_scenario_on_slurm_sudo(world: World, slurm_runner: RunnerApp) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    assert slurm_runner.slurm is not None
    sbatch_before = slurm_runner.slurm.calls.count("sbatch", user=CLUSTER_USER)
    job = await run_golden_scenario(world, "slurm_sudo")
    # Ran on SLURM as the cluster user, tagged with the job; calls recorded for resume.
    assert slurm_runner.slurm.records is not None
    tag = slurm_runner.slurm.records.tag_prefix(job.id)
    jobs = sacct_tagged(tag, since)
    assert jobs and all(line.endswith(f"|{CLUSTER_USER}") for line in jobs)
    local = Path(job.working_dir)
    assert (local / "1_illumination_correction" / "1_par_0000001.done.json").is_file()
    assert list((local / "2_mip_compound").glob("2_slurm_submit.sbatch"))
    assert job.working_dir_user.startswith(str(Path(world.zarr_dir).parent / "cache"))
    sbatch = slurm_runner.slurm.calls.count("sbatch", user=CLUSTER_USER) - sbatch_before
    # 1 + 2 (create: init, 2 images over target_num_jobs=2) + 2 (illumination) + 1 + 2 (MIP);
    # sacct may not list the last ones yet (accounting lags). Each one recorded, with its id.
    assert sbatch == 8
    assert len(jobs) <= sbatch
    assert await slurm_runner.slurm.records.count(job.id) == 8


async def test_task_exiting_non_zero(world: World) -> None:
    ok = await world.task(
        "mark", command_non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    bad = await world.task("fail here", command_non_parallel=mock("generic_task.py"))
    await world.add(ok)
    await world.add(bad, args_non_parallel={"raise_error": True})
    job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.log.startswith("TASK ERROR: Task name: fail here, position in Workflow: 1\n")
    assert "generic_task: failing on purpose (raise_error=True)" in job.log


async def test_a_task_over_its_memory_fails_the_job_with_slurm_s_reason(world: World) -> None:
    """SubmitJob → runner → cluster: a task with ``mem`` 100M that takes 600 MB. The cluster
    enforces memory with jobacct_gather's OverMemoryKill (no cgroups in this sandbox, see
    deploy/local/slurm-up.sh), so SLURM's state is FAILED with signal 9 and slurmstepd's line in
    the job's stderr, not OUT_OF_MEMORY; the job log names SLURM's own words either way."""
    ok = await world.task(
        "mark", command_non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    hog = await world.task("hog", command_non_parallel=f"{WORKER_PYTHON} {MEMORY_HOG}")
    await world.add(ok)
    await world.add(hog, args_non_parallel={"megabytes": 600}, meta_non_parallel={"mem": "100M"})
    job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert re.search(
        r"SLURM job \d+ ran out of memory: a task used more than its memory limit \(mem\)\. "
        r"SLURM: (OUT_OF_MEMORY|(FAILED|CANCELLED), signal 9, "
        r'slurmstepd: "exceeded memory limit")\.',
        job.log,
    ), job.log
    assert "output pickle" not in job.log
    # The tails of SLURM's stdout and stderr of the job.
    stdout = job.log.split("SLURM stdout (tail):\n", 1)[1].split("SLURM stderr (tail):\n", 1)
    assert "Working directory" in stdout[0], job.log
    assert "exceeded memory limit" in stdout[1], job.log
    # The task before it kept its result.
    assert all(img["types"] == {"marked": True} for img in (await world.images()).values())


async def test_pre_submission_commands_are_ignored_on_slurm_sudo(
    world: World, runner_base: Path, job_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As in the reference (§7.3): only slurm_ssh runs them; slurm_sudo warns and submits."""
    marker = job_dir / "pre-submission-ran"
    task = await world.task("t", command_non_parallel=mock("generic_task.py"))
    await world.add(task)
    with (
        caplog.at_level(logging.WARNING, logger="fractal_runner.slurm.sudo_executor"),
        config_changed(runner_base / "slurm.json", pre_submission_commands=[f"touch {marker}"]),
    ):
        job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert not marker.exists()
    assert "pre_submission_commands of the SLURM config are ignored on slurm_sudo" in caplog.text
    assert not list(Path(job.working_dir).glob("*/*_wrapper.sh"))


async def test_stop_during_a_run_scancels_its_jobs(world: World, slurm_runner: RunnerApp) -> None:
    ok = await world.task(
        "mark", command_non_parallel=mock("generic_task.py"), output_types={"marked": True}
    )
    sleeper = await world.task("sleeper", command_non_parallel=mock("generic_task.py"))
    await world.add(ok)
    await world.add(sleeper, args_non_parallel={"sleep_seconds": 300})
    job = await world.submit()
    assert slurm_runner.slurm is not None and slurm_runner.slurm.records is not None
    comment = slurm_runner.slurm.records.tag_prefix(job.id)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not re.search(f"\\|{re.escape(comment)}[^|]*\\|RUNNING", squeue_tags()):
        assert time.monotonic() < deadline, (await world.get(job.id)).log
        await asyncio.sleep(0.3)
    await world.client.jobs.StopJob(
        job_service_pb2.StopJobRequest(project_id=world.project_id, job_id=job.id),
        metadata=world.client.md,
    )
    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_FAILED
    assert (
        ended.log == f"JOB ERROR in Fractal job {job.id}:\nTRACEBACK:\nJob stopped by user request."
    )
    assert comment not in squeue_tags()
    # The first task's result is kept.
    assert all(
        img["types"] == {} or img["types"] == {"marked": True}
        for img in (await world.images()).values()
    )


async def test_submit_needs_slurm_user_and_cache_dir(slurm_admin: ApiClient, job_dir: Path) -> None:
    user = await slurm_admin.new_user(verified=True)
    w = await new_world(user, str(job_dir / "zarr2"))
    task = await w.task("t", command_non_parallel=mock("generic_task.py"))
    await w.add(task)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.submit()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "slurm_user" in (err.value.details() or "")
    assert os.path.exists(job_dir)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "FRACTAL_SLURM_CONFIG_FILE"), ('{"default_slurm_config": {}}', "partition")],
)
async def test_a_bad_slurm_config_file_stops_the_runner_at_start(
    service_env: dict[str, str], tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "slurm.json"
    config.write_text(content)
    env = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    settings = RunnerSettings(
        **env,
        runner_backend="slurm_sudo",
        slurm_config_file=config,
        slurm_worker_python=WORKER_PYTHON,
    )
    with pytest.raises(SettingsError, match=expected):
        RunnerApp(settings)
