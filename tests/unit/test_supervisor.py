"""The dev stack's restart rules: bounded exponential backoff, a series of restarts that resets
once a component stayed up, and giving up on one that keeps dying (the processes themselves are
exercised in tests/service/test_devstack.py and tests/e2e/test_make_run.py)."""

from __future__ import annotations

import signal

import pytest

from fractal_devstack.embedded import DevStackError
from fractal_devstack.supervisor import RestartPolicy, Supervisor, describe_exit


@pytest.mark.parametrize(
    ("restart", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (20, 30.0)]
)
def test_delays_double_up_to_the_cap(restart: int, delay: float) -> None:
    assert RestartPolicy(first_delay=1, max_delay=30).delay(restart) == delay


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
    ],
)
def test_describe_exit(returncode: int, words: str) -> None:
    assert describe_exit(returncode) == words


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Unit:
    """Dies at the given clock times; each restart fails ``failing_restarts`` times first."""

    def __init__(self, clock: Clock, deaths: list[float], failing_restarts: int = 0) -> None:
        self.name = "api"
        self.clock = clock
        self.deaths = deaths
        self.failing_restarts = failing_restarts
        self.alive = True
        self.restarts = 0

    def exit_reason(self) -> str | None:
        if self.alive and self.deaths and self.clock.now >= self.deaths[0]:
            self.deaths.pop(0)
            self.alive = False
        return None if self.alive else "exited with code 1"

    def restart(self) -> None:
        self.restarts += 1
        if self.failing_restarts:
            self.failing_restarts -= 1
            raise DevStackError("exited with code 1 while starting")
        self.alive = True

    def log_hint(self) -> str:
        return "(log)"


def supervise_until(clock: Clock, unit: Unit, until: float, policy: RestartPolicy) -> list[str]:
    said: list[str] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > until:
            raise TimeoutError

    with pytest.raises(TimeoutError):
        Supervisor([unit], said.append, policy, clock=clock, sleep=sleep).run(poll=1.0)
    return said


def test_a_failed_restart_is_retried_with_a_longer_delay() -> None:
    clock = Clock()
    unit = Unit(clock, deaths=[5.0], failing_restarts=2)
    said = supervise_until(clock, unit, 100.0, RestartPolicy(max_restarts=5))
    assert unit.alive and unit.restarts == 3
    assert [s for s in clock.sleeps if s != 1.0] == [2.0, 4.0]  # 1 s: polls and restart 1
    assert "api exited with code 1; restarting it in 1s (restart 1 of at most 5" in said[0]
    assert (
        "api did not come back (exited with code 1 while starting); restarting it in 2s"
        in (said[1])
    )
    assert said[-1] == "fractal-dev: api is running again."


def test_a_component_that_stayed_up_starts_a_new_series() -> None:
    clock = Clock()
    policy = RestartPolicy(max_restarts=1, stable_after=60.0)
    unit = Unit(clock, deaths=[10.0, 100.0, 200.0])
    supervise_until(clock, unit, 300.0, policy)
    assert unit.restarts == 3 and unit.alive


def test_a_component_that_keeps_dying_is_given_up() -> None:
    clock = Clock()
    unit = Unit(clock, deaths=[1.0, 3.0, 8.0, 20.0])
    with pytest.raises(DevStackError) as caught:
        Supervisor(
            [unit],
            lambda _: None,
            RestartPolicy(max_restarts=3, stable_after=60.0),
            clock=clock,
            sleep=clock.sleep,
        ).run(poll=1.0)
    assert unit.restarts == 3
    assert str(caught.value) == (
        "api exited with code 1, after 3 restart(s) in a row that did not stay up 60s; "
        "giving up. (log)"
    )
