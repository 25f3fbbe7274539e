"""Hostile job inputs on a slurm_sudo deployment, through SubmitJob to the real cluster: the
SLURM options of a task's meta, the submission's worker_init and slurm_account.

Each case ends one of two ways, and the case says which: refused at once with INVALID_ARGUMENT
naming the field (nothing written), or accepted and the job ends FAILED with a message naming
what is wrong — never INTERNAL, never a job left SUBMITTED, never a traceback or an exception
class name in the message, and no SLURM job submitted for options the runner refuses. After
all of them the runner still runs a good job.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from slurm_cluster_env import CLUSTER_USER
from slurm_world import World, mock, new_world, set_user

from fractal.v2 import job_pb2, job_service_pb2
from fractal_runner.app import RunnerApp
from fuzz.answers import FORBIDDEN_CODES, LEAK, MAX_MESSAGE_CHARS
from helpers import ApiClient

ACCOUNT = "fuzz-acct"


@dataclass(frozen=True)
class Case:
    meta: dict[str, Any] = field(default_factory=dict)
    submit: dict[str, str] = field(default_factory=dict)
    #: Refused by SubmitJob: the field named. Else the job FAILED with these words in its log,
    #: and no SLURM job was recorded (the runner refused the options before any sbatch).
    refused: str | None = None
    words: tuple[str, ...] = ()


CASES = {
    "meta-account": Case(meta={"account": "other"}, words=("account='other'", "slurm_account")),
    "meta-mem-unit": Case(meta={"mem": "12Q"}, words=("meta.mem",)),
    "meta-mem-negative": Case(meta={"mem": -5}, words=("meta.mem",)),
    "meta-mem-over-max": Case(meta={"mem": "1T"}, words=("SLURM batching failed",)),
    "meta-cpus-word": Case(meta={"cpus_per_task": "many"}, words=("meta.cpus_per_task",)),
    "meta-cpus-over-max": Case(meta={"cpus_per_task": 10**6}, words=("SLURM batching failed",)),
    "meta-time-line-break": Case(
        meta={"time": "1\n#SBATCH --account=other"}, words=("time: may not contain a line break",)
    ),
    "meta-extra-lines-not-a-list": Case(meta={"extra_lines": "x"}, words=("meta.extra_lines",)),
    "meta-extra-lines-account": Case(
        meta={"extra_lines": ["#SBATCH --account=other"]}, words=("may not set the SLURM account",)
    ),
    "meta-half-batching": Case(meta={"parallel_tasks_per_job": 2}, words=("tasks_per_job",)),
    "meta-gpu-without-gpu-config": Case(meta={"needs_gpu": True}, words=("gpu_slurm_config",)),
    "worker-init-account": Case(
        submit={"worker_init": "#SBATCH --account=other"}, words=("may not set the SLURM account",)
    ),
    "worker-init-short-account": Case(
        submit={"worker_init": "#SBATCH -A other"}, words=("may not set the SLURM account",)
    ),
    "worker-init-blank": Case(submit={"worker_init": " \n "}, refused="worker_init"),
    "slurm-account-not-the-users": Case(submit={"slurm_account": "other"}, refused="slurm_account"),
}


async def _world(admin: ApiClient, job_dir: Path) -> World:
    user = await admin.new_user(verified=True)
    await set_user(
        admin,
        user,
        slurm_user=CLUSTER_USER,
        cache_dir=str(job_dir / "cache"),
        slurm_accounts=[ACCOUNT],
    )
    return await new_world(user, str(job_dir / "zarr"))


@pytest.fixture
async def world(slurm_admin: ApiClient, slurm_runner: RunnerApp, job_dir: Path) -> World:
    subprocess.run(["sudo", "-u", CLUSTER_USER, "mkdir", "-p", str(job_dir / "cache")], check=True)
    return await _world(slurm_admin, job_dir)


async def _refused(world: World, case: Case) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.submit(**case.submit)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert case.refused is not None and case.refused in str(err.value.trailing_metadata())
    listed = await world.client.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(project_id=world.project_id), metadata=world.client.md
    )
    assert not listed.jobs  # nothing written


async def _failed(world: World, case: Case, runner: RunnerApp) -> None:
    try:
        submitted = await world.submit(**case.submit)
    except grpc.aio.AioRpcError as e:
        assert e.code() not in FORBIDDEN_CODES, e
        raise AssertionError(f"refused, but a FAILED job is expected: {e.details()}") from e
    job = await world.wait(submitted.id)
    assert job.status == job_pb2.JOB_STATUS_FAILED, job.log
    for word in case.words:
        assert word in job.log, job.log
    message = job.log.split("TRACEBACK:\n", 1)[-1]
    assert not LEAK.search(message), job.log
    assert len(message) <= MAX_MESSAGE_CHARS, job.log
    assert runner.slurm is not None and runner.slurm.records is not None
    assert await runner.slurm.records.count(job.id) == 0


async def test_hostile_job_inputs(
    slurm_admin: ApiClient, slurm_runner: RunnerApp, job_dir: Path, world: World
) -> None:
    """Every case at once (each its own user, project and job), each checked on its own."""

    async def one(name: str, case: Case) -> str:
        w = await _world(slurm_admin, job_dir)
        task = await w.task("t", command_non_parallel=mock("generic_task.py"))
        await w.add(task, meta_non_parallel=case.meta)
        try:
            if case.refused is not None:
                await _refused(w, case)
            else:
                await _failed(w, case, slurm_runner)
        except AssertionError as e:
            return f"{name}: {e}"
        return ""

    failures = await asyncio.gather(*(one(name, case) for name, case in CASES.items()))
    assert not any(failures), "\n".join(f for f in failures if f)


async def test_the_runner_still_runs_a_good_job_after_them(world: World) -> None:
    """With the user's account, meta options in range and a worker_init with a repeated line
    (one line in the script: a departure from the reference, which failed the job)."""
    task = await world.task("ok", command_non_parallel=mock("generic_task.py"))
    await world.add(task, meta_non_parallel={"mem": "200M", "cpus_per_task": 2})
    submitted = await world.submit(slurm_account=ACCOUNT, worker_init="export A=1\nexport A=1")
    job = await world.wait(submitted.id)
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log
    script = Path(job.working_dir, "0_ok", "0_slurm_submit.sbatch").read_text()
    assert f"#SBATCH --account={ACCOUNT}\n" in script
    assert "#SBATCH --cpus-per-task=2\n" in script and "--mem=200M" in script
    assert script.count("export A=1\n") == 1
