"""The SlurmPoller against the real cluster: real jobs, real squeue/sacct/scancel, calls counted."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from slurm_cluster_env import CLUSTER, CLUSTER_USER, POLL_INTERVAL

from fractal_runner.slurm import scheduler
from fractal_runner.slurm.job_end import UNKNOWN, describe_job_end
from fractal_runner.slurm.poller import SlurmPoller, next_round
from fractal_runner.slurm.scheduler import CommandResult, SchedulerCalls, SlurmCommands

DEADLINE = 120  # seconds: generous, the machine is shared


class RecordingCommands(SlurmCommands):
    """The real commands, remembering which job ids each squeue/sacct call asked about."""

    asked: list[tuple[str, set[str]]]

    async def run(self, argv, *, n_ids=0, as_user=False, command=None) -> CommandResult:
        ids = next((a.split("=", 1)[1] for a in argv if a.startswith("--jobs=")), "")
        self.asked.append((command or argv[0], set(filter(None, ids.split(",")))))
        return await super().run(argv, n_ids=n_ids, as_user=as_user, command=command)


async def _submit(commands: SlurmCommands, job_dir: Path, name: str, body: str, mem: str) -> str:
    script = job_dir / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"#SBATCH --job-name={name}\n#SBATCH --mem={mem}\n"
        f"#SBATCH --out={job_dir}/{name}.out\n#SBATCH --err={job_dir}/{name}.err\n"
        f"#SBATCH -D {job_dir}\n{body}\n"
    )
    script.chmod(0o644)
    return await commands.sbatch(str(script))


async def _wait_running(job_id: str) -> None:
    for _ in range(DEADLINE * 10):
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
        ).stdout.strip()
        if state == "RUNNING":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never ran")


async def test_final_states_each_resolved_as_soon_as_seen(job_dir: Path, calls: SchedulerCalls):
    commands = RecordingCommands(
        cluster=CLUSTER, user=CLUSTER_USER, calls=calls, sudo_user=CLUSTER_USER
    )
    commands.asked = []
    poller = SlurmPoller(commands, interval=POLL_INTERVAL)
    hog = "import time; b = b'x' * (600 * 2**20); time.sleep(30)"
    try:
        ids = {
            "ok": await _submit(commands, job_dir, "ok", "sleep 1", "50M"),
            "fail": await _submit(commands, job_dir, "fail", "echo bad >&2; exit 3", "50M"),
            "long": await _submit(commands, job_dir, "long", "sleep 300", "50M"),
            "oom": await _submit(commands, job_dir, "oom", f'python3 -c "{hog}"', "100M"),
        }
        ends = {name: poller.watch(job_id) for name, job_id in ids.items()}
        await _wait_running(ids["long"])
        ok = await asyncio.wait_for(ends["ok"], DEADLINE)
        # "ok" resolved on its own: the long job is still running and still watched
        assert not ends["long"].done() and ids["long"] in poller.watched
        subprocess.run(["scancel", ids["long"]], check=True)  # from outside the runner
        done = {name: await asyncio.wait_for(f, DEADLINE) for name, f in ends.items()}
    finally:
        await poller.close()

    assert ok.completed and ok.exit_code == 0
    assert (done["fail"].state, done["fail"].exit_code) == ("FAILED", 3)
    assert describe_job_end(done["fail"]) == f"SLURM job {ids['fail']} failed (exit code 3)."
    assert done["long"].state == "CANCELLED"
    assert "was cancelled" in describe_job_end(done["long"])
    stderr = (job_dir / "oom.err").read_text()
    assert (done["oom"].state, done["oom"].signal) == ("FAILED", 9), done["oom"]
    assert "ran out of memory" in describe_job_end(done["oom"], stderr_tail=stderr)

    # one squeue per round for every watched id; sacct only for ids squeue had stopped listing
    assert calls.count("sbatch") == 4 and calls.count("squeue") == poller.rounds
    assert 1 <= calls.count("sacct") <= poller.rounds
    listed_before: set[str] = set()
    for command, asked in commands.asked:
        if command == "squeue":
            listed_before = asked
        elif command == "sacct":
            assert asked <= listed_before  # a subset of the ids of the round's squeue
    rendered = calls.render()
    assert f'kind="squeue"}} {poller.rounds}' in rendered


async def test_a_failed_scheduler_call_concludes_nothing(
    job_dir: Path, calls: SchedulerCalls, monkeypatch: pytest.MonkeyPatch
):
    commands = SlurmCommands(
        cluster=CLUSTER, user=CLUSTER_USER, calls=calls, sudo_user=CLUSTER_USER
    )
    job_id = await _submit(commands, job_dir, "quick", "true", "50M")
    poller = SlurmPoller(commands, interval=POLL_INTERVAL)
    try:
        # Every squeue now times out (no grace for a held-up loop): the job's fate is unknown.
        commands.timeout = 1e-6
        monkeypatch.setattr(scheduler, "STALL_GRACE_SECONDS", 0.0)
        end = poller.watch(job_id)

        async def three_rounds() -> None:
            while poller.rounds < 3:
                await asyncio.sleep(POLL_INTERVAL / 2)

        await asyncio.wait_for(three_rounds(), DEADLINE)
        assert not end.done() and calls.count("sacct") == 0
        commands.timeout = 60.0
        result = await asyncio.wait_for(end, DEADLINE)
    finally:
        await poller.close()
    assert result.completed


async def test_a_job_unknown_to_squeue_and_sacct_resolves_unknown(commands: SlurmCommands):
    poller = SlurmPoller(commands, interval=POLL_INTERVAL, lost_after=1.0)
    try:
        end = await asyncio.wait_for(poller.watch("987654321"), DEADLINE)
    finally:
        await poller.close()
    assert end.state == UNKNOWN
    assert "unknown to SLURM" in describe_job_end(end)


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (10.0, 10.2, 11.0),  # the round took 0.2 s: the next is due 1 s after this one was
        (10.0, 10.99, 11.0),
        (10.0, 11.0, 12.0),  # took exactly the interval: that round is skipped
        (10.0, 11.5, 12.0),  # overran one round: skipped, the grid kept
        (10.0, 13.25, 14.0),  # overran three: skipped, no burst to catch up
        (10.0, 9.0, 11.0),  # a round that ran early (clock granularity): still one interval on
    ],
)
def test_next_round(due: float, now: float, expected: float) -> None:
    assert next_round(due, 1.0, now) == pytest.approx(expected)


class SlowSqueue(SlurmCommands):
    """The real commands, each squeue answering ``delay`` seconds late (a busy slurmctld);
    when each squeue was asked is kept."""

    delay: float
    started: list[float]

    async def run(self, argv, *, n_ids=0, as_user=False, command=None) -> CommandResult:
        if argv[0] == "squeue":
            self.started.append(time.monotonic())
            await asyncio.sleep(self.delay)
        return await super().run(argv, n_ids=n_ids, as_user=as_user, command=command)


async def test_one_squeue_per_interval_however_long_squeue_takes(
    job_dir: Path, calls: SchedulerCalls
):
    interval = 1.0
    commands = SlowSqueue(cluster=CLUSTER, user=CLUSTER_USER, calls=calls, sudo_user=CLUSTER_USER)
    commands.delay, commands.started = interval / 2, []
    job_id = await _submit(commands, job_dir, "steady", "sleep 300", "50M")
    poller = SlurmPoller(commands, interval=interval)
    try:
        end = poller.watch(job_id)
        while poller.rounds < 8:
            await asyncio.sleep(interval / 4)
        assert not end.done()
    finally:
        await poller.close()
        await commands.scancel([job_id])
    gaps = [b - a for a, b in zip(commands.started, commands.started[1:], strict=False)]
    # rounds start one interval apart; a loop sleeping the interval after each round would
    # start them interval + delay (1.5 s) apart
    assert statistics.median(gaps) < 1.25 * interval, gaps


async def test_an_answer_that_came_while_the_loop_was_held_up_is_not_a_timeout(
    commands: SlurmCommands,
):
    commands.timeout = 1.0
    # squeue a moment late, so the call is surely waiting for its answer when the loop stalls
    argv = ["sh", "-c", "sleep 0.3; exec squeue --noheader --format=%i"]
    call = asyncio.create_task(commands.run(argv))
    while not psutil.Process().children():
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # the call now waits for the answer
    time.sleep(commands.timeout + 2)  # synchronous work elsewhere; squeue answers meanwhile
    result = await call
    assert result.returncode == 0 and result.stderr == ""
