"""The order in which the systems of a comparison take their turns, and the ratios reported.

Two systems measured one after the other see different moments of a shared machine (other
work, autovacuum, the page cache). Taking turns, and changing who goes first each round
(AB, BA, AB, …; with three: ABC, BCA, CAB, …), spreads those moments over both sides, and the
comparison is made between medians of the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def turn_order(names: Sequence[T], round_index: int) -> list[T]:
    """``names`` rotated left by ``round_index``: every name goes first equally often."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, rounded; None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)
