"""LocalExecutor against real subprocesses running the mock tasks (no process is mocked)."""

from __future__ import annotations

import asyncio
import json
import shlex
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fractal_runner.taskproc.calls import (
    JobExecutionError,
    JobStopped,
    TaskCall,
    TaskExecutionError,
    read_task_output_file,
)
from fractal_runner.taskproc.layout import CallPaths, create_job_folders, parallel_prefix
from fractal_runner.taskproc.local_executor import LocalExecutor
from waiting import is_gone

MOCK_DIR = Path(__file__).resolve().parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"
PYTHON = shlex.quote(sys.executable)


def mock_command(script: str) -> str:
    return f"{PYTHON} {shlex.quote(str(MOCK_DIR / script))}"


def python_command(code: str) -> str:
    return f"{PYTHON} -c {shlex.quote(code)}"


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    job = tmp_path / "job"
    create_job_folders(job, [(0, "task")])
    return job


def make_calls(job_dir: Path, command: str, args_list: Sequence[dict[str, Any]]) -> list[TaskCall]:
    return [
        TaskCall(
            command=command,
            args=dict(args),
            paths=CallPaths.build(job_dir, "0_task", parallel_prefix(0, i)),
        )
        for i, args in enumerate(args_list)
    ]


def read_intervals(urls: Sequence[str]) -> list[tuple[float, float]]:
    """(start, end) recorded by generic_task_parallel in each image's data file."""
    intervals = []
    for url in urls:
        record = json.loads((Path(url) / "data").read_text().splitlines()[-1])
        intervals.append((record["start"], record["end"]))
    return intervals


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = best = 0
    for _, delta in events:  # at equal times, ends (-1) sort before starts (+1)
        current += delta
        best = max(best, current)
    return best


async def wait_for_files(paths: Sequence[Path], seconds: float = 20) -> list[dict[str, int]]:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"timeout waiting for {paths}"
        await asyncio.sleep(0.02)
    return [json.loads(p.read_text()) for p in paths]


# --- success --------------------------------------------------------------------------------


async def test_outputs_in_input_order(job_dir: Path, tmp_path: Path) -> None:
    """Mixed commands; slow calls first so completion order differs from input order."""
    urls = [str(tmp_path / f"plate.zarr/A/{i:02d}/0") for i in range(8)]
    calls = []
    for i, url in enumerate(urls):
        if i % 2 == 0:
            [call] = make_calls(job_dir, mock_command("generic_task_parallel.py"), [{}])
            args = {"zarr_url": url, "sleep_seconds": 0.3 if i < 4 else 0}
        else:
            [call] = make_calls(job_dir, mock_command("illumination_correction.py"), [{}])
            args = {"zarr_url": url, "overwrite_input": False}
        paths = CallPaths.build(job_dir, "0_task", parallel_prefix(0, i))
        calls.append(TaskCall(command=call.command, args=args, paths=paths))

    outputs = await LocalExecutor().run_calls(calls, concurrency=4)

    assert outputs == [
        None if i % 2 == 0 else {"image_list_updates": [{"zarr_url": f"{url}_corr", "origin": url}]}
        for i, url in enumerate(urls)
    ]
    for call in calls:
        assert json.loads(call.paths.args_json.read_text()) == call.args
        assert call.paths.log.exists()


async def test_invocation_contract(job_dir: Path) -> None:
    """`{command} --args-json A --out-json B`; stdout and stderr both in the log; args exact."""
    code = (
        "import json, sys\n"
        "print('ARGV', json.dumps(sys.argv[1:]))\n"
        "print('on stderr', file=sys.stderr)\n"
        "args = json.load(open(sys.argv[2]))\n"
        "json.dump({'echo': args}, open(sys.argv[4], 'w'))\n"
    )
    args = {"zarr_urls": ["/z/a", "/z/b"], "zarr_dir": "/z", "nested": {"x": [1, None, True]}}
    [call] = make_calls(job_dir, python_command(code), [args])

    [output] = await LocalExecutor().run_calls([call], concurrency=1)

    assert output == {"echo": args}
    assert json.loads(call.paths.args_json.read_text()) == args
    log = call.paths.log.read_text()
    argv = json.loads(log.split("ARGV ", 1)[1].splitlines()[0])
    assert argv == [
        "--args-json",
        str(call.paths.args_json),
        "--out-json",
        str(call.paths.out_json),
    ]
    assert "on stderr" in log


async def test_empty_batch_and_empty_output(job_dir: Path) -> None:
    executor = LocalExecutor()
    assert await executor.run_calls([], concurrency=None) == []
    code = "import sys; open(sys.argv[4], 'w').write('{}')"
    calls = make_calls(job_dir, python_command(code), [{}, {}])
    assert await executor.run_calls(calls, concurrency=None) == [None, None]


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize(("concurrency", "max_concurrency", "expected"), [(2, 32, 2), (None, 3, 3)])
async def test_concurrency_limit(
    job_dir: Path,
    tmp_path: Path,
    concurrency: int | None,
    max_concurrency: int,
    expected: int,
) -> None:
    urls = [str(tmp_path / f"img{i}") for i in range(7)]
    calls = make_calls(
        job_dir,
        mock_command("generic_task_parallel.py"),
        [{"zarr_url": url, "sleep_seconds": 0.4} for url in urls],
    )
    executor = LocalExecutor(max_concurrency=max_concurrency)

    assert await executor.run_calls(calls, concurrency=concurrency) == [None] * 7

    assert max_overlap(read_intervals(urls)) == expected


async def test_sliding_window_not_chunks(job_dir: Path, tmp_path: Path) -> None:
    """With a window of 2 and one slow call, the short calls run one after the other beside
    it; sequential chunks would make call 2 wait for the slow call 0."""
    urls = [str(tmp_path / f"img{i}") for i in range(4)]
    sleeps = [2.0, 0.05, 0.05, 0.05]
    calls = make_calls(
        job_dir,
        mock_command("generic_task_parallel.py"),
        [{"zarr_url": u, "sleep_seconds": s} for u, s in zip(urls, sleeps, strict=True)],
    )

    await LocalExecutor().run_calls(calls, concurrency=2)

    intervals = read_intervals(urls)
    slow_end = intervals[0][1]
    assert intervals[2][0] < slow_end and intervals[3][0] < slow_end
    assert max_overlap(intervals) == 2


async def test_invalid_concurrency(job_dir: Path) -> None:
    calls = make_calls(job_dir, python_command("pass"), [{}])
    with pytest.raises(ValueError, match="concurrency"):
        await LocalExecutor().run_calls(calls, concurrency=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        LocalExecutor(max_concurrency=0)


# --- failures -------------------------------------------------------------------------------


async def test_task_error_carries_log(job_dir: Path, tmp_path: Path) -> None:
    calls = make_calls(
        job_dir,
        mock_command("generic_task_parallel.py"),
        [{"zarr_url": str(tmp_path / "a")}, {"zarr_url": str(tmp_path / "b"), "raise_error": True}],
    )
    with pytest.raises(TaskExecutionError) as info:
        await LocalExecutor().run_calls(calls, concurrency=2)
    assert "exited with code 1" in info.value.message
    assert "generic_task_parallel: failing on purpose (raise_error=True)" in info.value.log
    assert info.value.log == calls[1].paths.log.read_text()


async def test_failure_stops_the_batch(job_dir: Path, tmp_path: Path) -> None:
    """The first failure kills the calls still running and launches no new one."""
    pid_file = tmp_path / "pids.json"
    long_call, failing, never = make_calls(
        job_dir, mock_command("generic_task_parallel.py"), [{}] * 3
    )
    long_call = TaskCall(
        command=mock_command("spawning_task.py"),
        args={"zarr_url": str(tmp_path / "a"), "pid_file": str(pid_file)},
        paths=long_call.paths,
    )
    failing = TaskCall(
        command=python_command(
            "import os, sys, time\n"
            f"while not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
            "sys.exit('boom')\n"
        ),
        args={},
        paths=failing.paths,
    )
    never = TaskCall(never.command, {"zarr_url": str(tmp_path / "c")}, never.paths)
    executor = LocalExecutor(kill_grace_seconds=5)

    start = time.monotonic()
    with pytest.raises(TaskExecutionError) as info:
        await executor.run_calls([long_call, failing, never], concurrency=2)

    assert time.monotonic() - start < 10  # SIGTERM was enough: no wait for the 600 s sleep
    assert "boom" in info.value.log
    pids = json.loads(pid_file.read_text())
    assert is_gone(pids["task_pid"]) and is_gone(pids["child_pid"])
    assert not never.paths.args_json.exists()
    assert not executor.stopped


async def test_terminated_calls_are_not_failures(job_dir: Path, tmp_path: Path) -> None:
    """A call that exits non-zero because the executor terminated it (after another call failed)
    does not replace the original failure."""
    ready = tmp_path / "ready"
    trapping, garbage = make_calls(job_dir, python_command("pass"), [{}, {}])
    trapping = TaskCall(
        python_command(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
            f"open({str(ready)!r}, 'w').close()\n"
            "time.sleep(600)\n"
        ),
        {},
        trapping.paths,
    )
    garbage = TaskCall(
        python_command(
            "import os, sys, time\n"
            f"while not os.path.exists({str(ready)!r}): time.sleep(0.01)\n"
            "open(sys.argv[4], 'w').write('garbage')\n"
        ),
        {},
        garbage.paths,
    )
    with pytest.raises(JobExecutionError, match="Validation of task output failed") as info:
        await LocalExecutor().run_calls([trapping, garbage], concurrency=2)
    assert not isinstance(info.value, TaskExecutionError)


async def test_invalid_output_file(job_dir: Path, tmp_path: Path) -> None:
    [call] = make_calls(
        job_dir,
        mock_command("generic_task_parallel.py"),
        [{"zarr_url": str(tmp_path / "a"), "write_garbage": True}],
    )
    with pytest.raises(JobExecutionError, match="Validation of task output failed") as info:
        await LocalExecutor().run_calls([call], concurrency=None)
    assert not isinstance(info.value, TaskExecutionError)


async def test_not_an_object_output(job_dir: Path) -> None:
    calls = make_calls(
        job_dir, python_command("import sys; open(sys.argv[4], 'w').write('[1]')"), [{}]
    )
    with pytest.raises(JobExecutionError, match="must hold a JSON object"):
        await LocalExecutor().run_calls(calls, concurrency=None)


def test_read_task_output_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    assert read_task_output_file(path) is None
    path.write_text("{}")
    assert read_task_output_file(path) is None
    path.write_text('{"image_list_removals": ["/a"]}')
    assert read_task_output_file(path) == {"image_list_removals": ["/a"]}
    path.write_text("")
    with pytest.raises(JobExecutionError, match="Validation of task output failed"):
        read_task_output_file(path)


@pytest.mark.parametrize(
    "command",
    ["/nonexistent/python task.py", "no-such-command-fractal-xyz --flag", "", "'unbalanced"],
)
async def test_command_not_valid(job_dir: Path, command: str) -> None:
    calls = make_calls(job_dir, command, [{}])
    with pytest.raises(TaskExecutionError, match="is not valid") as info:
        await LocalExecutor().run_calls(calls, concurrency=None)
    assert "is not valid" in info.value.log
    assert not calls[0].paths.args_json.exists()  # checked before anything runs


async def test_command_that_cannot_start(job_dir: Path, tmp_path: Path) -> None:
    """Found and executable, but exec fails (missing interpreter): an executor-level error."""
    script = tmp_path / "task.sh"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    calls = make_calls(job_dir, str(script), [{}])
    with pytest.raises(JobExecutionError, match="Cannot start the task process"):
        await LocalExecutor().run_calls(calls, concurrency=None)


async def test_killed_by_signal(job_dir: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    calls = make_calls(job_dir, python_command(code), [{}])
    with pytest.raises(JobExecutionError, match="terminated by signal SIGKILL") as info:
        await LocalExecutor().run_calls(calls, concurrency=None)
    assert not isinstance(info.value, JobStopped)


# --- stop -----------------------------------------------------------------------------------


async def test_cancel_kills_process_trees(job_dir: Path, tmp_path: Path) -> None:
    """Stop kills the tasks, the children in their process group and the children that moved
    to a session of their own; run_calls raises JobStopped, and so does every later call."""
    pid_files = [tmp_path / "p0.json", tmp_path / "p1.json", tmp_path / "p2.json"]
    args: list[dict[str, Any]] = [
        {"zarr_url": str(tmp_path / "a"), "pid_file": str(pid_files[0])},
        {"zarr_url": str(tmp_path / "b"), "pid_file": str(pid_files[1]), "child_new_session": True},
        {"zarr_url": str(tmp_path / "c"), "pid_file": str(pid_files[2])},
    ]
    calls = make_calls(job_dir, mock_command("spawning_task.py"), args)
    executor = LocalExecutor(kill_grace_seconds=5)
    run = asyncio.create_task(executor.run_calls(calls, concurrency=2))

    pids = await wait_for_files(pid_files[:2])
    all_pids = [pid for entry in pids for pid in entry.values()]
    assert not any(is_gone(pid) for pid in all_pids)
    start = time.monotonic()
    await executor.cancel()
    assert time.monotonic() - start < 4  # SIGTERM was enough
    assert all(is_gone(pid) for pid in all_pids)

    with pytest.raises(JobStopped, match="stopped") as info:
        await run
    assert isinstance(info.value, JobExecutionError)
    assert not calls[2].paths.args_json.exists()  # the third call never started
    assert executor.stopped
    with pytest.raises(JobStopped):
        await executor.run_calls(calls[:1], concurrency=1)


async def test_cancel_escalates_to_sigkill(job_dir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )
    calls = make_calls(job_dir, python_command(code), [{}])
    executor = LocalExecutor(kill_grace_seconds=0.3)
    run = asyncio.create_task(executor.run_calls(calls, concurrency=None))
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    start = time.monotonic()
    await executor.cancel()
    assert 0.3 <= time.monotonic() - start < 5
    with pytest.raises(JobStopped):
        await run


async def test_cancel_when_idle(job_dir: Path) -> None:
    executor = LocalExecutor()
    await executor.cancel()
    with pytest.raises(JobStopped):
        await executor.run_calls(make_calls(job_dir, python_command("pass"), [{}]), concurrency=1)


async def test_outer_cancellation_leaves_no_process(job_dir: Path, tmp_path: Path) -> None:
    """If the coroutine itself is cancelled (runner shutdown), the processes are killed too."""
    pid_file = tmp_path / "pids.json"
    calls = make_calls(
        job_dir,
        mock_command("spawning_task.py"),
        [{"zarr_url": str(tmp_path / "a"), "pid_file": str(pid_file)}],
    )
    run = asyncio.create_task(LocalExecutor().run_calls(calls, concurrency=1))
    [pids] = await wait_for_files([pid_file])
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    deadline = time.monotonic() + 5
    while not all(is_gone(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, pids
        await asyncio.sleep(0.02)
    assert calls[0].paths.log.exists()


# --- per-call resume ------------------------------------------------------------------------


def counting_command(counter: Path, fail_on: str = "", while_exists: Path | None = None) -> str:
    """A task that appends its zarr_url to ``counter`` and writes it back as an update; the
    call of ``fail_on`` exits 1 (after counting) while the file ``while_exists`` exists."""
    flag = str(while_exists or counter.with_name("no-such-file"))
    return python_command(
        "import json, os, sys\n"
        "args = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))\n"
        f"open({str(counter)!r}, 'a').write(args['zarr_url'] + '\\n')\n"
        f"if args['zarr_url'] == {fail_on!r} and os.path.exists({flag!r}): sys.exit(1)\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "json.dump({'image_list_updates': [{'zarr_url': args['zarr_url']}]}, open(out, 'w'))\n"
    )


async def test_completed_calls_are_not_run_again(job_dir: Path, tmp_path: Path) -> None:
    """A batch that failed after some calls completed, run again (as a resumed job does):
    only the calls that had not completed run, and the outputs are those of the first runs,
    in call order."""
    counter, failing = tmp_path / "counter", tmp_path / "failing"
    urls = [f"/z/{i}" for i in range(6)]
    args = [{"zarr_url": url} for url in urls]
    failing.touch()
    again = make_calls(job_dir, counting_command(counter, "/z/3", failing), args)
    with pytest.raises(TaskExecutionError):
        await LocalExecutor().run_calls(again, concurrency=1)  # 0, 1, 2 complete; 3 fails
    assert counter.read_text().split() == urls[:4]

    counter.write_text("")
    failing.unlink()
    outputs = await LocalExecutor().run_calls(again, concurrency=2)
    assert outputs == [{"image_list_updates": [{"zarr_url": url}]} for url in urls]
    assert sorted(counter.read_text().split()) == urls[3:]

    counter.write_text("")
    assert await LocalExecutor().run_calls(again, concurrency=2) == outputs
    assert counter.read_text() == ""  # everything completed: nothing runs


async def test_a_call_with_other_arguments_runs_again(job_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    command = counting_command(counter)
    await LocalExecutor().run_calls(
        make_calls(job_dir, command, [{"zarr_url": "/z/a"}]), concurrency=1
    )
    [output] = await LocalExecutor().run_calls(
        make_calls(job_dir, command, [{"zarr_url": "/z/b"}]), concurrency=1
    )
    assert output == {"image_list_updates": [{"zarr_url": "/z/b"}]}
    assert counter.read_text().split() == ["/z/a", "/z/b"]


async def test_a_stopped_call_is_not_recorded(job_dir: Path, tmp_path: Path) -> None:
    """A call killed by a stop did not complete: it has no record."""
    marker = tmp_path / "started"
    calls = make_calls(
        job_dir,
        python_command(f"import time; open({str(marker)!r}, 'w').close(); time.sleep(600)"),
        [{}],
    )
    executor = LocalExecutor(kill_grace_seconds=0.2)
    run = asyncio.create_task(executor.run_calls(calls, concurrency=1))
    while not marker.exists():
        await asyncio.sleep(0.02)
    await executor.cancel()
    with pytest.raises(JobStopped):
        await run
    assert not calls[0].paths.done.exists()
