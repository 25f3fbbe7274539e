"""The summary table: our figures next to fractal-server 2.3.11's (same machine kind, 2 cores)
and the goals of the rewrite."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

Results = Mapping[str, Any]


@dataclass(frozen=True)
class Row:
    benchmark: str
    ours: str
    reference: str
    goal: str
    met: str  # "yes", "NO", or "" when there is no goal


def _get(results: Results, *path: str | int) -> Any:
    node: Any = results
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _met(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return ""
    return "yes" if ok(value) else "NO"


def _error(entry: Results, width: int = 60) -> str:
    text = str(entry["error"]).splitlines()[0]
    return "FAILED: " + (text if len(text) <= width else text[:width] + "…")


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f} {unit}".strip()


_LIST_REFERENCE_C1 = "213–223 req/s, p50 4.4 ms"
_LIST_REFERENCE = "172–182 req/s, p99 ~100 ms"
_LIST_GOAL = "≥ 2,000 RPC/s"


def _list_projects_row(label: str, run: Results) -> Row:
    """c=1 is shown beside the reference; higher concurrency also against the goal, which a
    run with errors does not meet."""
    single = run["concurrency"] == 1
    reference = _LIST_REFERENCE_C1 if single else _LIST_REFERENCE
    goal = "" if single else _LIST_GOAL
    if "error" in run:
        return Row(label, _error(run), reference, goal, "" if single else "NO")
    rate, p50, p99, errors = run["rpc_per_s"], run["p50_ms"], run["p99_ms"], run["errors"]
    ours = f"{rate:,.0f} RPC/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    if errors:
        ours += f", {errors:,} errors"
    if single:
        return Row(label, ours, reference, "", "")
    return Row(label, ours, reference, goal, _met(rate, lambda v: v >= 2000 and not errors))


def _list_projects_rows(sections: Results) -> list[Row]:
    rows: list[Row] = []
    python = _get(sections, "api", "list_projects")
    if python and "error" in python:
        rows.append(Row("ListProjects (grpc.aio client)", _error(python), "", _LIST_GOAL, "NO"))
    for run in _get(python, "runs") or []:
        c, procs = run["concurrency"], run["client_processes"]
        label = f"ListProjects c={c}" + (f" ({procs} client processes)" if procs > 1 else "")
        rows.append(_list_projects_row(label, run))
    h2load = _get(sections, "api", "list_projects_h2load")
    if h2load and "error" in h2load:
        rows.append(Row("ListProjects (h2load)", _error(h2load), "", _LIST_GOAL, "NO"))
    elif h2load and "skipped" in h2load:
        rows.append(Row("ListProjects (h2load)", f"skipped: {h2load['skipped']}", "", "", ""))
    for run in _get(h2load, "runs") or []:
        c, connections = run["concurrency"], run["connections"]
        how = "h2load" + (f", {connections} connections" if connections > 1 else "")
        rows.append(_list_projects_row(f"ListProjects c={c} ({how})", run))
    return rows


def _images_rows(sections: Results) -> list[Row]:
    rows: list[Row] = []
    bulk = _get(sections, "images", "bulk")
    if bulk and "error" in bulk:
        rows.append(Row("AddImages in one call", _error(bulk), "–", "< 5 s (100,000)", "NO"))
    elif bulk:
        seconds = bulk["seconds"]
        rows.append(
            Row(
                f"AddImages {bulk['images']:,} in one call",
                _fmt(seconds, "s", 2),
                "–",
                "< 5 s",
                _met(seconds, lambda v: v < 5),
            )
        )
    single = _get(sections, "images", "single")
    if single:
        blocks = single["blocks"]
        first, last = blocks[0], blocks[-1]
        rows.append(
            Row(
                f"AddImages 1/call, images {first['from']:,}–{first['to']:,}",
                _fmt(first["images_per_s"], "/s", 0),
                "106/s (first 1,000)",
                "",
                "",
            )
        )
        rows.append(
            Row(
                f"AddImages 1/call, images {last['from']:,}–{last['to']:,}",
                _fmt(last["images_per_s"], "/s", 0),
                "19.5/s (at 10,000)",
                "",
                "",
            )
        )
        if single.get("overall_per_s") is not None:
            rows.append(
                Row(
                    f"AddImages 1/call, 0–{single['total']:,} overall",
                    f"{single['overall_per_s']:,.0f}/s ({single['overall_seconds']:.1f} s)",
                    "33/s (~300 s)",
                    "",
                    "",
                )
            )
    large = _get(sections, "images", "large") or _get(sections, "query", "large_setup")
    if large and "error" in large:
        rows.append(Row("Load the large dataset", _error(large), "–", "", ""))
    elif large:
        calls = large["calls"]
        how = f"{large['batch']:,}/call" if not large["notes"] else f"{calls} calls, see notes"
        rows.append(
            Row(
                f"Load {large['images']:,} images ({how})",
                f"{large['rpc_seconds_total']:.1f} s ({large['images_per_s']:,.0f}/s)",
                "–",
                "",
                "",
            )
        )
    return rows


_QUERY_REFERENCE = {1_000: "28 ms", 5_000: "102 ms", 10_000: "195 ms"}


def _query_rows(sections: Results) -> list[Row]:
    """One row per (size, page): as loaded, and after ANALYZE. A goal counts as met only if it
    is met in both states."""
    rows: list[Row] = []
    analyzed = {e["images"]: e for e in _get(sections, "query", "sizes_analyzed") or []}
    for entry in _get(sections, "query", "sizes") or []:
        size = entry["images"]
        goal, limit = "", 0.0
        if size == 10_000:
            goal, limit = "< 20 ms", 20.0
        elif size >= 1_000_000:
            goal, limit = "< 50 ms", 50.0
        for page in ("first_page", "later_page"):
            values = [entry[page]["p50_ms"]]
            ours = f"{values[0]:.1f} ms"
            if size in analyzed:
                values.append(analyzed[size][page]["p50_ms"])
                ours += f" / {values[1]:.1f} ms"
            what = "first page" if page == "first_page" else "later page"
            rows.append(
                Row(
                    f"QueryImages {size:,} images, {what} p50 (as loaded / analyzed)",
                    ours,
                    _QUERY_REFERENCE.get(size, "–"),
                    goal,
                    "" if not limit else ("yes" if max(values) < limit else "NO"),
                )
            )
    return rows


def _jobs_rows(sections: Results) -> list[Row]:
    jobs = _get(sections, "jobs")
    if not jobs or "single_image" not in jobs:
        return []
    single = jobs["single_image"]
    p50 = single["p50_ms"] / 1000
    medium, large, lean = jobs["medium"], jobs["large"], jobs.get("large_lean")
    ratio = large["ratio_of_medians"]
    lean_rows = []
    if lean:
        lean_ratio = lean["ratio_of_medians"]
        lean_rows.append(
            Row(
                f"Job {lean['images']:,} images, task on python -S, ÷ direct",
                f"{lean_ratio:.3f} ({lean['job_median_seconds']:.2f} s job, "
                f"{lean['direct_median_seconds']:.2f} s direct)",
                "–",
                "≤ 1.1",
                _met(lean_ratio, lambda v: v <= 1.1),
            )
        )
    return [
        Row(
            f"Job, 1 image (p50 of {single['count']})",
            _fmt(p50, "s", 3),
            "0.24 s",
            "< 0.15 s",
            _met(p50, lambda v: v < 0.15),
        ),
        Row(
            f"Job, {medium['images']:,} images",
            _fmt(medium["median_seconds"], "s", 2),
            "0.92 s" if medium["images"] == 100 else "–",
            "",
            "",
        ),
        Row(
            f"Job, {large['images']:,} images",
            _fmt(large["job_median_seconds"], "s", 2),
            "8.3 s" if large["images"] == 1000 else "–",
            "",
            "",
        ),
        Row(
            f"Job {large['images']:,} images ÷ direct launch",
            f"{ratio:.3f} ({large['direct_median_seconds']:.2f} s direct)",
            "–",
            "≤ 1.1",
            _met(ratio, lambda v: v <= 1.1),
        ),
        *lean_rows,
    ]


def _section_errors(sections: Results) -> list[Row]:
    return [
        Row(f"[{name}] section", _error(entry), "", "", "")
        for name, entry in sections.items()
        if isinstance(entry, Mapping) and "error" in entry
    ]


def _delay_rows(sections: Results) -> list[Row]:
    delay = _get(sections, "delay")
    if not delay:
        return []
    label = "ListProjects delay added by a concurrent AddImages of 100,000"
    if "error" in delay:
        return [Row(label, _error(delay), "", "", "")]
    during, alone = delay["list_projects_during"], delay["list_projects_alone"]
    ours = (
        f"{_fmt(delay['added_delay_ms'], 'ms', 0)} (max {_fmt(during['max_ms'], 'ms', 0)}, "
        f"p50 {_fmt(during['p50_ms'], 'ms', 1)} vs {_fmt(alone['p50_ms'], 'ms', 1)} alone)"
    )
    return [Row(label, ours, "–", "", "")]


def summary_rows(sections: Results) -> list[Row]:
    return [
        *_section_errors(sections),
        *_list_projects_rows(sections),
        *_images_rows(sections),
        *_query_rows(sections),
        *_jobs_rows(sections),
        *_delay_rows(sections),
    ]


def rows_as_dicts(rows: list[Row]) -> list[dict[str, str]]:
    return [asdict(row) for row in rows]


def format_table(rows: list[Row]) -> str:
    header = Row("benchmark", "ours", "fractal-server 2.3.11", "goal", "met")
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in Row.__dataclass_fields__]

    def line(row: Row) -> str:
        cells = [
            getattr(row, f).ljust(w) for f, w in zip(Row.__dataclass_fields__, widths, strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
