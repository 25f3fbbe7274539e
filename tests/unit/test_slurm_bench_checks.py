"""The SLURM benchmark's checks of the recorded scheduler calls (bench/slurm_bench.py)."""

from __future__ import annotations

import pytest
from bench.slurm_bench import Recorded, call_checks, grid_start


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([10.0, 11.0, 12.0], 10.0),  # on time: the grid starts at the first call
        ([10.3, 11.0, 12.1, 13.0], 10.0),  # the first call late: the grid is the others'
        ([10.95, 12.0, 13.05], 11.0),  # phases on both sides of 0: one cluster across it
    ],
)
def test_grid_start_is_where_the_calls_phases_begin(times: list[float], expected: float) -> None:
    start = grid_start(times, 1.0)
    off_grid = (start - expected) % 1.0
    assert min(off_grid, 1.0 - off_grid) < 0.11  # on the grid (whole intervals from it)
    assert start <= min(times)


def _squeue(at: float, *listed: str) -> Recorded:
    return Recorded(at, "squeue", listed, frozenset(listed))


def test_one_squeue_per_window_even_when_the_first_call_was_late() -> None:
    log = [_squeue(10.3, "1"), *(_squeue(10.0 + k, "1") for k in range(1, 6))]
    checks = call_checks(log, 1.0)
    assert checks["squeue_intervals_by_calls"] == {"1": 6}
    assert checks["squeue_max_in_one_interval"] == 1


def test_two_squeue_calls_in_one_interval_are_seen() -> None:
    log = [_squeue(10.0, "1"), _squeue(11.0, "1"), _squeue(11.4, "1"), _squeue(12.0, "1")]
    checks = call_checks(log, 1.0)
    assert checks["squeue_max_in_one_interval"] == 2


def test_sacct_for_an_id_the_latest_squeue_listed_is_counted() -> None:
    log = [
        Recorded(0.0, "sbatch", ("1",)),
        Recorded(0.1, "sbatch", ("2",)),
        _squeue(1.0, "1", "2"),
        Recorded(1.1, "sacct", ("2",)),  # listed by the squeue before it: a wasted call
        Recorded(2.0, "squeue", ("1", "2"), frozenset()),
        Recorded(2.1, "sacct", ("1", "2")),  # neither listed any more: as it should be
    ]
    checks = call_checks(log, 1.0)
    assert checks["sacct_calls_while_squeue_listed"] == 1
    assert checks["sacct_ids_while_squeue_listed"] == 1
    assert checks["sacct_ids"] == 3
    assert checks["job_seconds"] == pytest.approx([2.1, 2.0])
