"""What the fault suite measures after a scenario, as small functions of plain data, and the
figures table (one row per scenario) printed at the end of the run."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: (job id, task mark, zarr_url): one task call.
CallKey = tuple[int, str, str]


@dataclass
class Figures:
    """One scenario's figures (the closing note's fault matrix)."""

    scenario: str
    done: int = 0
    failed: int = 0
    stuck: int = 0
    duplicate_history: int = 0
    image_defects: int = 0
    facet_mismatches: int = 0
    completed_reruns: int = 0
    in_flight: int = 0
    in_flight_max_reruns: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.done} / {self.failed} / {self.stuck} "
            f"| {self.duplicate_history} | {self.image_defects} | {self.facet_mismatches} "
            f"| {self.completed_reruns} | {self.in_flight} | {self.in_flight_max_reruns} |"
        )


#: Every scenario's figures of this run, in the order they ran.
FIGURES: list[Figures] = []


def figures_table(rows: Sequence[Figures]) -> str:
    header = (
        "| scenario | jobs DONE / FAILED / stuck | duplicate history | image defects "
        "| facet mismatches | completed calls re-run | calls in flight at the fault "
        "| most re-runs of an in-flight call |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(r.row() for r in rows)])


# --- the invocation log ---------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    event: str  # "start" or "done"
    key: CallKey
    pid: int
    time: float


def read_invocations(path: Path) -> list[Invocation]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        Invocation(r["event"], (r["job"], r["mark"], r["zarr_url"]), r["pid"], r["time"])
        for r in records
    ]


def calls_by_key(invocations: Iterable[Invocation]) -> dict[CallKey, list[Invocation]]:
    """Each call's events in time order."""
    calls: dict[CallKey, list[Invocation]] = defaultdict(list)
    for inv in sorted(invocations, key=lambda i: i.time):
        calls[inv.key].append(inv)
    return dict(calls)


def completed_before(calls: Mapping[CallKey, list[Invocation]], instant: float) -> set[CallKey]:
    return {
        key
        for key, events in calls.items()
        if any(e.event == "done" and e.time < instant for e in events)
    }


def in_flight_at(calls: Mapping[CallKey, list[Invocation]], instant: float) -> dict[CallKey, int]:
    """The calls started but not completed before ``instant``, with the pid of their last start."""
    flying: dict[CallKey, int] = {}
    for key, events in calls.items():
        before = [e for e in events if e.time < instant]
        starts = [e for e in before if e.event == "start"]
        if starts and not any(e.event == "done" for e in before):
            flying[key] = starts[-1].pid
    return flying


def completed_reruns(calls: Mapping[CallKey, list[Invocation]], fault: float) -> list[CallKey]:
    """Calls that had completed before the fault and were started again afterwards."""
    rerun = []
    for key in completed_before(calls, fault):
        first_done = min(e.time for e in calls[key] if e.event == "done")
        if any(e.event == "start" and e.time > first_done for e in calls[key]):
            rerun.append(key)
    return sorted(rerun)


def in_flight_reruns(calls: Mapping[CallKey, list[Invocation]], fault: float) -> dict[CallKey, int]:
    """For each call in flight at the fault: how many times it was started again after it."""
    return {
        key: sum(1 for e in calls[key] if e.event == "start" and e.time >= fault)
        for key in in_flight_at(calls, fault)
    }


def never_completed(
    calls: Mapping[CallKey, list[Invocation]], expected: Iterable[CallKey]
) -> list[CallKey]:
    return sorted(key for key in expected if not any(e.event == "done" for e in calls.get(key, [])))


# --- job, dataset and image checks (on plain data read through the public API) --------------


def job_counts(statuses: Mapping[int, str]) -> Counter[str]:
    """DONE / FAILED / stuck (still SUBMITTED at the deadline) per job status name."""
    counts: Counter[str] = Counter()
    for status in statuses.values():
        counts["DONE" if status == "DONE" else "FAILED" if status == "FAILED" else "stuck"] += 1
    return counts


def duplicate_history(history: Sequence[tuple[int, str]]) -> int:
    """Entries beyond the first for each workflow task (``history``: (workflowtask id, status))."""
    seen = Counter(wft_id for wft_id, _ in history)
    return sum(n - 1 for n in seen.values())


def image_defects(
    images: Sequence[Mapping[str, Any]], expected_urls: Sequence[str], marks: Sequence[str]
) -> list[str]:
    """What is wrong with a dataset's images: each expected image exactly once, nothing else,
    and each task's output (attribute ``<mark>`` = ``<mark>:<name>``, type ``<mark>_done``)
    on every image."""
    defects = []
    urls = Counter(image["zarr_url"] for image in images)
    defects += [f"{url} listed {n} times" for url, n in urls.items() if n > 1]
    defects += [f"{url} missing" for url in expected_urls if url not in urls]
    defects += [f"{url} unexpected" for url in urls if url not in expected_urls]
    for image in images:
        name = image["zarr_url"].rstrip("/").rsplit("/", 1)[-1]
        for mark in marks:
            value = image["attributes"].get(mark)
            if value != f"{mark}:{name}":
                defects.append(f"{image['zarr_url']}: attribute {mark}={value!r}")
            if image["types"].get(f"{mark}_done") is not True:
                defects.append(f"{image['zarr_url']}: type {mark}_done missing")
    return defects


def expected_facets(
    images: Sequence[Mapping[str, Any]],
) -> tuple[dict[tuple[str, Any], int], dict[str, int]]:
    """From the full image list: images per (attribute key, value) and per true type."""
    attributes: Counter[tuple[str, Any]] = Counter()
    types: Counter[str] = Counter()
    for image in images:
        attributes.update(image["attributes"].items())
        types.update(key for key, value in image["types"].items() if value)
    return dict(attributes), dict(types)


def facet_mismatches(
    expected: Mapping[Any, int], counted: Mapping[Any, int], what: str
) -> list[str]:
    """Differences between the images counted in the list and QueryImages' total_count."""
    keys = set(expected) | set(counted)
    return [
        f"{what} {key}: {expected.get(key, 0)} in the list, total_count {counted.get(key, 0)}"
        for key in sorted(keys, key=repr)
        if expected.get(key, 0) != counted.get(key, 0)
    ]
