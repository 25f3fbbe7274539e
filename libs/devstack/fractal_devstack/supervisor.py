"""Keep the stack's components running: a component that dies is restarted, with backoff.

Every component is polled; one that has died is restarted after ``1, 2, 4, … s`` (capped), each
step said on the terminal with the reason it died and where its log is. A component that keeps
dying (``max_restarts`` restarts in a row, none of which stayed up ``stable_after`` seconds) ends
the supervision with an error naming it, and the caller stops the rest. Components are checked
in start order, so PostgreSQL and NATS come back before the services that need them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from fractal_devstack.embedded import DevStackError, EmbeddedNats, EmbeddedPostgres


class Supervised(Protocol):
    name: str

    def exit_reason(self) -> str | None:
        """None while it runs; else how it ended ("was killed by SIGKILL", …)."""

    def restart(self) -> None:
        """Clean up after the dead process, start again and wait until ready (or raise
        :class:`DevStackError`)."""

    def log_hint(self) -> str:
        """Where its output is, and its last lines."""


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: "exited with code 3", "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class SupervisedServer:
    """An embedded PostgreSQL or NATS as a supervised component: it comes back on the same
    address (the services keep theirs), with its data."""

    def __init__(self, name: str, server: EmbeddedPostgres | EmbeddedNats) -> None:
        self.name = name
        self.server = server
        self.url = server.url
        self.pid = server.pid

    def exit_reason(self) -> str | None:
        return None if self.server.is_running() else f"(pid {self.pid}) is gone"

    def restart(self) -> None:
        url = self.server.restart()
        self.pid = self.server.pid
        if url != self.url:  # only if the port was taken meanwhile
            raise DevStackError(f"{self.name} came back on {url}, not on {self.url}")

    def log_hint(self) -> str:
        return self.server.log.describe(RESTART_LOG_LINES)


#: How much of a dead component's log a restart message shows.
RESTART_LOG_LINES = 10


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 1.0
    max_delay: float = 30.0
    #: Restarts in a row (none staying up ``stable_after`` seconds) before giving up.
    max_restarts: int = 5
    stable_after: float = 60.0

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1, 2, …) of a series."""
        return float(min(self.first_delay * 2 ** (restart - 1), self.max_delay))


@dataclass
class _Record:
    restarts: int = 0  # in the current series
    up_since: float = 0.0


class Supervisor:
    def __init__(
        self,
        units: Sequence[Supervised],
        say: Callable[[str], None],
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.units = list(units)
        self.say = say
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self.sleep = sleep
        self._records = {unit.name: _Record(up_since=clock()) for unit in self.units}

    def run(self, poll: float = 0.5) -> NoReturn:
        """Supervise until a component cannot be brought back (raises DevStackError); only a
        signal (an exception from its handler) ends this otherwise."""
        while True:
            for unit in self.units:
                reason = unit.exit_reason()
                if reason is not None:
                    self._bring_back(unit, reason)
            self.sleep(poll)

    def _bring_back(self, unit: Supervised, reason: str) -> None:
        policy, record = self.policy, self._records[unit.name]
        if self.clock() - record.up_since >= policy.stable_after:
            record.restarts = 0  # it had been fine for a while: a new series
        while True:
            if record.restarts >= policy.max_restarts:
                raise DevStackError(
                    f"{unit.name} {reason}, after {record.restarts} restart(s) in a row that "
                    f"did not stay up {policy.stable_after:g}s; giving up. {unit.log_hint()}"
                )
            record.restarts += 1
            delay = policy.delay(record.restarts)
            self.say(
                f"fractal-dev: {unit.name} {reason}; restarting it in {delay:g}s "
                f"(restart {record.restarts} of at most {policy.max_restarts} in a row). "
                f"{unit.log_hint()}"
            )
            self.sleep(delay)
            try:
                unit.restart()
            except DevStackError as exc:
                reason = f"did not come back ({exc})"
                continue
            record.up_since = self.clock()
            self.say(f"fractal-dev: {unit.name} is running again.")
            return
