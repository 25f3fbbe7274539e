"""The `local` executor: task calls as subprocesses of the runner, with a concurrency window.

Differences from the reference's `local` / `local_experimental` backends (§7.1, §7.2), on purpose:
- One asyncio event loop, no thread or process pool: each call is a subprocess started with
  `asyncio.create_subprocess_exec` in its own session/process group.
- `concurrency` is a sliding window (a new call starts as soon as one ends), not the reference's
  sequential chunks of `parallel_tasks_per_job`; the limit on simultaneous calls is the same.
- `concurrency=None` means "all calls at once", capped at `max_concurrency`, which defaults to
  the size of the reference's thread pool, min(32, cpu_count + 4), the real cap of its `local`
  backend. An explicit `concurrency` is honoured as given.
- Fail fast: the first failing call stops new launches and terminates the calls still running
  (the reference lets the current chunk finish). Calls terminated by the executor are not
  failures, whatever their exit code. If several calls failed on their own (they exited before
  the termination), a TaskExecutionError (it carries the task's log) wins over a
  JobExecutionError; within a kind, the lowest call index wins.
- Per-call resume: a call with a completion record (`taskproc.completions`) is not run again,
  its recorded output is used; every call that exits 0 with a readable output is recorded
  before it counts.
- Stop works (`cancel`), like `local_experimental`: every running process group gets SIGTERM,
  then SIGKILL after `kill_grace_seconds`; descendants found by walking the process tree (psutil)
  before the kill get the same treatment, so children that left the group die too.

All methods must be called from the event loop that runs `run_calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from fractal_runner.taskproc import proctree
from fractal_runner.taskproc.calls import (
    JobExecutionError,
    JobStopped,
    TaskCall,
    TaskExecutionError,
    build_argv,
    read_log,
    read_task_output_file,
    resolve_command,
    task_process_failure,
    write_args_file,
)
from fractal_runner.taskproc.completions import load_completions, record_completion
from fractal_runner.taskproc.ledger import ProcessLedger

__all__ = [
    "DEFAULT_KILL_GRACE_SECONDS",
    "DEFAULT_MAX_CONCURRENCY",
    "LocalExecutor",
    "use_pidfd_child_watcher",
]

DEFAULT_MAX_CONCURRENCY = min(32, (os.cpu_count() or 1) + 4)
DEFAULT_KILL_GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.02
_AFTER_KILL_WAIT_SECONDS = 5.0
_LOG_FILE_MODE = 0o644

Outcome = dict[str, Any] | None

logger = logging.getLogger(__name__)


def use_pidfd_child_watcher() -> bool:
    """Wait for subprocesses through pidfds in the running loop (Linux >= 5.3).

    Python 3.11's default child watcher starts a thread per subprocess, blocked in waitpid; from
    3.12 on asyncio uses pidfds by default where the kernel has them. Call from inside the loop
    that will start the processes, before it starts any. Returns whether pidfds are in use.
    """
    if sys.version_info >= (3, 12):
        return hasattr(os, "pidfd_open")
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a seccomp profile that refuses the call
        return False
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = asyncio.get_child_watcher()
        if isinstance(current, asyncio.PidfdChildWatcher) and current.is_active():
            return True
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
    return True


class _KilledByExecutor(Exception):
    """A call that ended because the executor terminated it (not a failure of its own)."""


@dataclass(eq=False)
class _Batch:
    """The state of one `run_calls` invocation."""

    calls: Sequence[TaskCall]
    commands: dict[str, list[str]]
    results: list[Outcome]
    running: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)
    failures: list[tuple[int, TaskExecutionError | JobExecutionError]] = field(default_factory=list)
    aborted: bool = False
    terminator: asyncio.Task[None] | None = None


class LocalExecutor:
    """Runs task calls as local subprocesses; one instance per job."""

    def __init__(
        self,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.kill_grace_seconds = kill_grace_seconds
        #: Where each started process is recorded (for the clean-up after a runner crash).
        self.ledger: ProcessLedger | None = None
        self._stopped = False
        self._batches: set[_Batch] = set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def bind_job(self, spec: Any) -> None:
        """Part of the executor interface; the local executor needs nothing from the spec."""

    async def run_calls(
        self,
        calls: Sequence[TaskCall],
        *,
        concurrency: int | None,
        meta: Mapping[str, Any] | None = None,
        task_name: str = "task",
    ) -> list[Outcome]:
        """Run every call, at most `concurrency` at a time; return the outputs in input order.

        `meta` and `task_name` are part of the executor interface and ignored here.

        Each output is the parsed out-json dict, or None when the task wrote nothing (or `{}`).
        Raises TaskExecutionError / JobExecutionError on failure (see the module docstring) and
        JobStopped if `cancel` was called before or during the run. Every command is checked
        before anything starts.
        """
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 or None, got {concurrency}")
        if self._stopped:
            raise JobStopped()
        if not calls:
            return []
        commands: dict[str, list[str]] = {}
        for call in calls:
            if call.command not in commands:
                # shlex's cost grows with the command: off the loop (lease renewals run there).
                commands[call.command] = await asyncio.to_thread(resolve_command, call.command)

        batch = _Batch(calls=calls, commands=commands, results=[None] * len(calls))
        completed = await asyncio.to_thread(load_completions, calls)
        for index, completion in completed.items():
            batch.results[index] = completion.output
        pending = [index for index in range(len(calls)) if index not in completed]
        if completed:
            logger.info(
                "%d of %d calls already completed: not run again", len(completed), len(calls)
            )
        if not pending:
            return batch.results
        width = min(len(pending), concurrency or self.max_concurrency)
        indices = iter(pending)  # shared by the workers: the sliding window
        self._batches.add(batch)
        workers = [asyncio.create_task(self._worker(batch, indices)) for _ in range(width)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # Cancelled from outside (or an unexpected error): leave no process behind.
            batch.aborted = True
            _kill_now(list(batch.running.values()))
            for worker in workers:
                worker.cancel()
            raise
        finally:
            self._batches.discard(batch)
        if batch.terminator is not None:
            await batch.terminator

        if self._stopped:
            raise JobStopped()
        if batch.failures:
            raise _pick_failure(batch.failures)
        return batch.results

    async def cancel(self) -> None:
        """Stop the job: kill every running call (whole process trees) and refuse new ones.

        Returns once the processes are gone; the pending `run_calls` then raises JobStopped,
        and so does every later one.
        """
        self._stopped = True
        processes: list[asyncio.subprocess.Process] = []
        for batch in self._batches:
            batch.aborted = True
            batch.killed.update(_still_running(batch))
            processes.extend(batch.running.values())
        await _terminate(processes, self.kill_grace_seconds)

    # --- internals ------------------------------------------------------------------------

    async def _worker(self, batch: _Batch, indices: Iterator[int]) -> None:
        for index in indices:
            if batch.aborted:
                return
            call = batch.calls[index]
            try:
                output = await self._run_one(batch, call)
                await _record(call, output)
                batch.results[index] = output
            except _KilledByExecutor:
                pass
            except (TaskExecutionError, JobExecutionError) as e:
                batch.failures.append((index, e))
                self._abort(batch)

    def _abort(self, batch: _Batch) -> None:
        """After a failure: no new launches, terminate the calls still running."""
        if batch.aborted:
            return
        batch.aborted = True
        batch.killed.update(_still_running(batch))
        batch.terminator = asyncio.create_task(
            _terminate(list(batch.running.values()), self.kill_grace_seconds)
        )

    async def _run_one(self, batch: _Batch, call: TaskCall) -> Outcome:
        paths = call.paths
        argv = build_argv(batch.commands[call.command], paths)
        try:
            write_args_file(call)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.out_json)  # never read a stale output
            log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _LOG_FILE_MODE)
        except OSError as e:
            raise JobExecutionError(f"Cannot prepare the files of a task call: {e}") from e
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise JobExecutionError(
                f"Cannot start the task process `{shlex.join(argv)}`: {e}"
            ) from e
        finally:
            os.close(log_fd)

        pid = process.pid
        batch.running[pid] = process
        if self.ledger is not None:
            self.ledger.record(pid)
        if batch.aborted:  # aborted or stopped while this process was being started
            batch.killed.add(pid)
            _kill_now([process])
        try:
            returncode = await process.wait()
        except BaseException:  # cancelled from outside: leave no process behind
            batch.killed.add(pid)
            _kill_now([process])
            raise
        finally:
            del batch.running[pid]

        if returncode == 0:
            return read_task_output_file(paths.out_json)
        if pid in batch.killed:  # whatever its exit code, it ended because we terminated it
            raise _KilledByExecutor()
        message = task_process_failure(returncode, argv, paths.log)
        if returncode > 0:
            raise TaskExecutionError(message, log=read_log(paths.log))
        raise JobExecutionError(message)


async def _record(call: TaskCall, output: Outcome) -> None:
    """The call completed: record it durably before it counts (``taskproc.completions``)."""
    try:
        await asyncio.to_thread(record_completion, call, output)
    except OSError as e:
        raise JobExecutionError(f"Cannot record the completion of a task call: {e}") from e


def _still_running(batch: _Batch) -> list[int]:
    """Pids of the batch's processes that have not exited (those are the ones we terminate)."""
    return [pid for pid, process in batch.running.items() if process.returncode is None]


def _pick_failure(
    failures: list[tuple[int, TaskExecutionError | JobExecutionError]],
) -> TaskExecutionError | JobExecutionError:
    ranked = sorted(failures, key=lambda f: (not isinstance(f[1], TaskExecutionError), f[0]))
    return ranked[0][1]


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_now(processes: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGKILL the trees of `processes` immediately (no grace, nothing awaited)."""
    descendants = proctree.descendants([p.pid for p in processes if p.returncode is None])
    proctree.signal_all([p.pid for p in processes], descendants, signal.SIGKILL)


async def _terminate(processes: Sequence[asyncio.subprocess.Process], grace: float) -> None:
    """SIGTERM the process trees, SIGKILL what is left after `grace`, wait until all are gone.

    Each task process leads its own process group (`start_new_session`), so killpg reaches the
    children that stayed in the group, even after the leader died; the descendants listed before
    the first signal cover the children that moved to another group or session.
    """
    if not processes:
        return
    groups = [p.pid for p in processes]
    descendants = proctree.descendants([p.pid for p in processes if p.returncode is None])
    proctree.signal_all(groups, descendants, signal.SIGTERM)

    loop = asyncio.get_running_loop()
    kill_at = loop.time() + grace
    give_up_at = kill_at + _AFTER_KILL_WAIT_SECONDS
    killed = False
    while any(p.returncode is None for p in processes) or any(map(_is_alive, descendants)):
        now = loop.time()
        if not killed and now >= kill_at:
            proctree.signal_all(groups, [d for d in descendants if _is_alive(d)], signal.SIGKILL)
            killed = True
        elif killed and now >= give_up_at:
            survivors = [p.pid for p in processes if p.returncode is None]
            survivors += [d.pid for d in descendants if _is_alive(d)]
            logger.error("Processes %s survived SIGKILL; giving up on them", survivors)
            return
        await asyncio.sleep(_POLL_SECONDS)
    if not killed:
        # Group members that were not descendants (e.g. orphaned grandchildren) may ignore
        # SIGTERM; SIGKILL on an empty group is a harmless ESRCH.
        proctree.signal_all(groups, [], signal.SIGKILL)
