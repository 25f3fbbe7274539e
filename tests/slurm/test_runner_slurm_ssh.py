"""The runner with FRACTAL_RUNNER_BACKEND=slurm_ssh against the real cluster, through the sshd of
deploy/local as its service user: the golden scenario (results identical to the local
executor's), and a run that survives its SSH connection being cut off and given back.

The SSH traffic goes through the TCP forwarder of conftest (``proxy``), which the test can cut.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from slurm_cluster_env import SSH_USER
from slurm_world import (
    JOB_TIMEOUT,
    World,
    config_changed,
    mock,
    new_world,
    run_golden_scenario,
    sacct_tagged,
    squeue_tags,
)

from fault.tcp_proxy import TcpProxy
from fractal.v2 import image_pb2, image_service_pb2, job_pb2
from fractal_runner.app import RunnerApp
from fractal_runner.slurm.backend import SlurmSshBackend
from helpers import ApiClient


@pytest.fixture
async def world(ssh_admin: ApiClient, ssh_runner: RunnerApp, ssh_dirs: dict[str, Path]) -> World:
    """A user of the slurm_ssh deployment (nothing SLURM-specific: one service user runs all)."""
    user = await ssh_admin.new_user(verified=True)
    return await new_world(user, str(ssh_dirs["data"] / f"zarr{time.monotonic_ns()}"))


def _backend(runner: RunnerApp) -> SlurmSshBackend:
    assert isinstance(runner.slurm, SlurmSshBackend)
    return runner.slurm


async def test_golden_scenario_on_slurm_ssh(
    world: World, ssh_runner: RunnerApp, ssh_dirs: dict[str, Path]
) -> None:
    backend = _backend(ssh_runner)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    sbatch_before = backend.calls.count("sbatch")
    job = await run_golden_scenario(world, "slurm_ssh")
    # The same 8 SLURM jobs as on slurm_sudo, as the SSH user; the task files came back.
    assert backend.calls.count("sbatch") - sbatch_before == 8
    assert backend.records is not None
    assert await backend.records.count(job.id) == 8
    jobs = sacct_tagged(backend.records.tag_prefix(job.id), since)
    assert jobs and all(line.endswith(f"|{SSH_USER}") for line in jobs)
    local = Path(job.working_dir)
    assert (local / "1_illumination_correction" / "1_par_0000001.done.json").is_file()
    assert (local / "1_illumination_correction" / "1_par_0000001.log").is_file()
    # The Job names its remote folder as the reference's JobReadV2 does: working_dir_user is
    # {FRACTAL_SLURM_SSH_WORKING_BASE_DIR}/{folder name}, where the SLURM jobs wrote.
    assert job.working_dir_user == str(ssh_dirs["remote"] / local.name)
    assert Path(job.working_dir_user, "1_illumination_correction", "1_par_0000001.log").is_file()
    assert backend.connection.generation == 1  # one shared connection, version-checked once


async def test_a_run_survives_its_ssh_connection_cut_off(
    world: World, ssh_runner: RunnerApp, proxy: TcpProxy
) -> None:
    backend = _backend(ssh_runner)
    assert backend.records is not None
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    urls = [f"{world.zarr_dir}/plate/{i}" for i in range(4)]
    await world.client.images.AddImages(
        image_service_pb2.AddImagesRequest(
            project_id=world.project_id,
            dataset_id=world.dataset_id,
            images=[image_pb2.Image(zarr_url=url) for url in urls],
        ),
        metadata=world.client.md,
    )
    task = await world.task(
        "sleepy", command_parallel=mock("generic_task_parallel.py"), output_types={"seen": True}
    )
    await world.add(task, args_parallel={"sleep_seconds": 4})
    job = await world.submit()
    tag = backend.records.tag_prefix(job.id)
    connections = backend.connection.generation

    deadline = time.monotonic() + JOB_TIMEOUT
    while len(re.findall(f"\\|{re.escape(tag)}[^|]*\\|RUNNING", squeue_tags(SSH_USER))) < 2:
        assert time.monotonic() < deadline, (await world.get(job.id)).log
        await asyncio.sleep(0.2)
    proxy.cut()  # the login node is gone: every SSH connection dropped, new ones refused
    await asyncio.sleep(3)
    proxy.restore()

    ended = await world.wait(job.id)
    assert ended.status == job_pb2.JOB_STATUS_DONE, ended.log
    images = await world.images()
    assert all(image["types"] == {"seen": True} for image in images.values())
    for url in urls:  # each call ran once
        runs = [json.loads(line) for line in Path(url, "data").read_text().splitlines()]
        assert [r["task"] for r in runs] == ["generic_task_parallel"], url
    assert backend.connection.generation > connections  # it reconnected
    assert await backend.records.count(job.id) == 2  # 4 calls, 2 per job: nothing resubmitted
    for _ in range(100):
        if len(sacct_tagged(tag, since)) == 2:
            break
        await asyncio.sleep(0.3)
    assert len(sacct_tagged(tag, since)) == 2


async def test_pre_submission_commands_run_before_each_sbatch(
    world: World, ssh_runner: RunnerApp, runner_base: Path, ssh_dirs: dict[str, Path]
) -> None:
    """Reference §7.6: on slurm_ssh the config's pre_submission_commands run in a wrapper
    script, as the SSH user on the login node, before sbatch; one that fails refuses the
    submission with its message."""
    backend = _backend(ssh_runner)
    marker = ssh_dirs["remote"] / f"pre-{time.monotonic_ns()}.log"
    task = await world.task("t", command_non_parallel=mock("generic_task.py"))
    await world.add(task)
    sbatch_before = backend.calls.count("sbatch")
    with config_changed(
        runner_base / "slurm.json",
        pre_submission_commands=[f"echo ran as $(whoami) >> {marker}", 'test -n "$HOME"'],
    ):
        job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    assert marker.read_text().splitlines() == [f"ran as {SSH_USER}"]  # once, for the one sbatch
    assert backend.calls.count("sbatch") - sbatch_before == 1  # the wrapper counts as sbatch
    wrapper = Path(job.working_dir, "0_t", "0_slurm_submit.sbatch_wrapper.sh")
    assert wrapper.read_text().splitlines()[-1].startswith("sbatch --parsable /")

    with config_changed(
        runner_base / "slurm.json",
        pre_submission_commands=["echo 'module: slurm/23 not found' >&2", "exit 3"],
    ):
        job = await world.wait((await world.submit()).id)
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert "SLURM submission failed: sbatch refused" in job.log
    assert "module: slurm/23 not found" in job.log
