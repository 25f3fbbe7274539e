"""Latency summaries and CPU accounting."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p90, p99, mean, min and max of latencies given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else math.nan,
        "min_ms": round(min(ms), 3) if ms else math.nan,
        "max_ms": round(max(ms), 3) if ms else math.nan,
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process so far; NaN when it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return math.nan
    return float(times.user + times.system)


def _postgres_cpu() -> float:
    """CPU seconds of every process named postgres (the whole server, not only our database)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] == "postgres" and proc.info["cpu_times"] is not None:
            times = proc.info["cpu_times"]
            total += times.user + times.system
    return total


@dataclass
class CpuMeter:
    """CPU seconds used during a measurement by this process, the services and PostgreSQL,
    as a fraction of the wall time (1.0 = one core busy)."""

    pids: dict[str, int]
    _wall: float = 0.0
    _self: float = 0.0
    _services: dict[str, float] | None = None
    _pg: float = 0.0
    _machine: float = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._self = usage.ru_utime + usage.ru_stime
        self._services = {name: process_cpu(pid) for name, pid in self.pids.items()}
        self._pg = _postgres_cpu()
        self._machine = _busy_seconds()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result = {"client": (usage.ru_utime + usage.ru_stime - self._self) / wall}
        for name, pid in self.pids.items():
            before = (self._services or {}).get(name, math.nan)
            result[name] = (process_cpu(pid) - before) / wall
        # Approximate: a backend that exits during the window takes its CPU time with it.
        result["postgres"] = max(0.0, _postgres_cpu() - self._pg) / wall
        result["machine"] = (_busy_seconds() - self._machine) / wall
        return {k: round(v, 2) for k, v in result.items()}


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "nice", 0.0))


def machine_info() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
