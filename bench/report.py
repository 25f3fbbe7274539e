"""The summary table: our figures next to fractal-server 2.3.11's, both measured in the same
run on this machine (bench/reference.py), taking turns; how many times faster ours is; and the
goals of the rewrite. When the reference did not run, its column says why."""

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
    faster: str  # how many times faster ours is (reference time ÷ ours, or ours rate ÷ ref)
    goal: str
    met: str  # "yes", "NO", or "" when there is no goal


HEADER = Row("benchmark", "ours", "fractal-server 2.3.11", "ours faster", "goal", "met")


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


def times(value: float | None) -> str:
    """A speed-up as ``×3.2``; ``–`` when unknown."""
    if value is None:
        return "–"
    return f"×{value:,.2f}" if value < 10 else f"×{value:,.0f}"


def speedup(reference: float | None, ours: float | None) -> float | None:
    """reference ÷ ours (for times: > 1 means ours is faster)."""
    if reference is None or ours is None or ours == 0:
        return None
    return reference / ours


_LIST_GOAL = "≥ 2,000 RPC/s"


def _rate(run: Results, server: str) -> str:
    rate, p50, p99, errors = run["rpc_per_s"], run["p50_ms"], run["p99_ms"], run["errors"]
    text = f"{rate:,.0f} RPC/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    cpu = _get(run, "cpu_cores_used", server)
    if cpu:
        text += f" ({rate / cpu:,.0f}/CPU-s)"
    if errors:
        text += f", {errors:,} errors"
    return text


def _list_projects_rows(sections: Results, ref_missing: str) -> list[Row]:
    rows: list[Row] = []
    python = _get(sections, "api", "list_projects")
    if python and "error" in python:
        rows.append(Row("ListProjects (grpc.aio client)", _error(python), "", "", _LIST_GOAL, "NO"))
    for run in _get(python, "runs") or []:
        c, procs = run["concurrency"], run["client_processes"]
        label = f"ListProjects c={c}, grpc.aio client" + (
            f" ({procs} processes)" if procs > 1 else ""
        )
        goal = "" if c == 1 else _LIST_GOAL
        if "error" in run:
            rows.append(Row(label, _error(run), "–", "", goal, "NO" if goal else ""))
            continue
        met = "" if c == 1 else _met(run["rpc_per_s"], lambda v: v >= 2000)
        rows.append(Row(label, _rate(run, "api"), "–", "", goal, met))
    h2load = _get(sections, "api", "list_projects_h2load")
    if h2load and "error" in h2load:
        rows.append(Row("ListProjects (h2load)", _error(h2load), "", "", _LIST_GOAL, "NO"))
    elif h2load and "skipped" in h2load:
        rows.append(Row("ListProjects (h2load)", f"skipped: {h2load['skipped']}", "", "", "", ""))
    ref_runs = {r["concurrency"]: r for r in _get(h2load, "reference_runs") or []}
    for run in _get(h2load, "runs") or []:
        c = run["concurrency"]
        label = f"ListProjects c={c}, h2load (reference: GET /api/v2/project/, --h1)"
        goal = "" if c == 1 else _LIST_GOAL
        ref = ref_runs.get(c)
        ref_text = ref_missing or "–"
        faster = ""
        if ref is not None:
            ref_text = _error(ref) if "error" in ref else _rate(ref, "reference")
            if "error" not in ref and "error" not in run and ref["rpc_per_s"]:
                faster = times(run["rpc_per_s"] / ref["rpc_per_s"])
        if "error" in run:
            rows.append(Row(label, _error(run), ref_text, "", goal, "NO" if goal else ""))
            continue
        good = run["rpc_per_s"] >= 2000 and not run["errors"]
        met = "" if c == 1 else ("yes" if good else "NO")
        rows.append(Row(label, _rate(run, "api"), ref_text, faster, goal, met))
    return rows


def _images_rows(sections: Results, ref_missing: str) -> list[Row]:
    rows: list[Row] = []
    bulk = _get(sections, "images", "bulk")
    if bulk and "error" in bulk:
        rows.append(Row("AddImages in one call", _error(bulk), "–", "", "< 5 s (100,000)", "NO"))
    elif bulk:
        seconds = bulk["seconds"]
        rows.append(
            Row(
                f"AddImages {bulk['images']:,} in one call",
                _fmt(seconds, "s", 2),
                "– (no such call)",
                "",
                "< 5 s",
                _met(seconds, lambda v: v < 5),
            )
        )
    single = _get(sections, "images", "single")
    ref_single = _get(sections, "images", "single_reference")
    ref_blocks = _get(ref_single, "blocks") or []
    if single:
        blocks = single["blocks"]
        for index, block in ((0, blocks[0]), (-1, blocks[-1])):
            ref = ref_blocks[index] if ref_blocks else None
            ref_text = ref_missing or "–"
            faster = ""
            if ref_single and "error" in ref_single:
                ref_text = _error(ref_single)
            elif ref is not None:
                ref_text = f"{ref['images_per_s']:,.0f}/s (images {ref['from']:,}–{ref['to']:,})"
                faster = times(block["images_per_s"] / ref["images_per_s"])
            rows.append(
                Row(
                    f"AddImages 1/call, images {block['from']:,}–{block['to']:,}",
                    _fmt(block["images_per_s"], "/s", 0),
                    ref_text,
                    faster,
                    "",
                    "",
                )
            )
        if single.get("overall_per_s") is not None:
            rows.append(
                Row(
                    f"AddImages 1/call, 0–{single['total']:,} overall",
                    f"{single['overall_per_s']:,.0f}/s ({single['overall_seconds']:.1f} s)",
                    "–",
                    "",
                    "",
                    "",
                )
            )
    large = _get(sections, "images", "large") or _get(sections, "query", "large_setup")
    large = large or _get(sections, "export", "large_setup")
    if large and "error" in large:
        rows.append(Row("Load the large dataset", _error(large), "–", "", "", ""))
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
                "",
            )
        )
    return rows


def _query_rows(sections: Results, ref_missing: str) -> list[Row]:
    """One row per (size, page): ours as loaded / after ANALYZE (a goal counts as met only if
    met in both), the reference and the speed-up from the run where the two took turns."""
    rows: list[Row] = []
    analyzed = {e["images"]: e for e in _get(sections, "query", "sizes_analyzed") or []}
    pairs_node = _get(sections, "query", "reference")
    pairs = {p["images"]: p for p in pairs_node} if isinstance(pairs_node, list) else {}
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
            pair = pairs.get(size)
            ref_text, faster = (ref_missing or "–"), ""
            if pair is not None:
                ref_p50 = pair["reference"][page]["p50_ms"]
                ref_text = f"{ref_p50:.1f} ms (ours {pair['ours'][page]['p50_ms']:.1f} ms in turns)"
                faster = times(pair[f"reference_over_ours_{page}"])
            elif size >= 1_000_000:
                ref_text = "– (not loaded there)"
            rows.append(
                Row(
                    f"QueryImages {size:,} images, {what} p50 (as loaded / analyzed)",
                    ours,
                    ref_text,
                    faster,
                    goal,
                    "" if not limit else ("yes" if max(values) < limit else "NO"),
                )
            )
    return rows


def _job_cell(side: Results | None) -> str:
    if side is None:
        return "–"
    text = _fmt(side["median_seconds"], "s", 3)
    if side.get("server_median_seconds") is not None:
        text += f" (server {side['server_median_seconds']:.3f} s)"
    return text


def _job_row(label: str, entry: Results, ref_missing: str, goal: str = "", met: str = "") -> Row:
    ref = entry.get("reference")
    faster = ""
    if ref is not None:
        client = times(entry.get("reference_over_ours"))
        server = times(entry.get("reference_over_ours_server"))
        faster = f"{client} ({server} server)"
    ref_text = _job_cell(ref) if ref is not None else (ref_missing or "–")
    return Row(label, _job_cell(entry.get("ours")), ref_text, faster, goal, met)


def _direct_row(label: str, entry: Results) -> Row:
    ours = entry.get("ours_over_direct")
    ref = entry.get("reference_over_direct")
    direct = _get(entry, "direct", "median_seconds")
    ref_text = "–" if ref is None else f"{ref:.3f}"
    return Row(
        label,
        f"{ours:.3f} ({_fmt(direct, 's', 2)} direct)" if ours is not None else "–",
        ref_text,
        "",
        "≤ 1.1",
        _met(ours, lambda v: v <= 1.1),
    )


def _jobs_rows(sections: Results, ref_missing: str) -> list[Row]:
    jobs = _get(sections, "jobs")
    if not jobs or "single_image" not in jobs:
        return []
    single, medium, large, lean = (
        jobs["single_image"],
        jobs["medium"],
        jobs["large"],
        jobs.get("large_lean"),
    )
    p50 = _get(single, "ours", "median_seconds")
    count = len(_get(single, "ours", "runs") or [])
    rows = [
        _job_row(
            f"Job, 1 image (median of {count})",
            single,
            ref_missing,
            "< 0.15 s",
            _met(p50, lambda v: v < 0.15),
        ),
        _job_row(f"Job, {medium['images']:,} images", medium, ref_missing),
    ]
    three = jobs.get("medium_three_tasks")
    if three:
        rows.append(
            _job_row(f"Job, {three['images']:,} images, 3-task workflow", three, ref_missing)
        )
    pool = jobs.get("medium_reference_default_pool")
    if pool:
        label = f"Job, {pool['images']:,} images, reference without parallel_tasks_per_job"
        rows.append(_job_row(label, pool, ref_missing))
    rows += [
        _job_row(f"Job, {large['images']:,} images", large, ref_missing),
        _direct_row(f"Job {large['images']:,} images ÷ direct launch", large),
    ]
    if lean:
        rows.append(_job_row(f"Job, {lean['images']:,} images, task on python -S", lean, ""))
        rows.append(_direct_row(f"Job {lean['images']:,} images, python -S, ÷ direct", lean))
    return rows


def _lists_rows(sections: Results, ref_missing: str) -> list[Row]:
    rows: list[Row] = []
    node = _get(sections, "lists")
    if node and "error" in node:
        return [Row("ListJobs/Workflows/Tasks", _error(node), "", "", "< 10 ms p50", "NO")]
    for entry in _get(node, "lists") or []:
        ours = entry["ours"]
        p50 = ours["per_page"]["p50_ms"]
        ref = entry.get("reference")
        ref_text, faster = ref_missing or "–", ""
        if ref is not None:
            ref_text = (
                f"{ref['per_call']['p50_ms']:,.0f} ms p50, {ref['p95_ms']:,.0f} ms p95 "
                f"(all {ref['items']:,}, {ref['bytes'] / 1e6:.1f} MB)"
            )
            faster = times(entry.get("reference_call_over_our_page"))
        rows.append(
            Row(
                f"List{entry['kind'].title()}, {entry['rows']:,} {entry.get('scope', 'per user')} "
                f"(ours: a page of {ours['page_size']}; reference: GET {_ref_path(entry)})",
                f"{p50:.1f} ms p50, {ours['p95_ms']:.1f} ms p95"
                + (f", server {ours['server_mean_ms']:.1f} ms" if "server_mean_ms" in ours else ""),
                ref_text,
                faster,
                "< 10 ms p50",
                _met(p50, lambda v: v < 10),
            )
        )
    return rows


def _ref_path(entry: Results) -> str:
    return str(_get(entry, "reference", "path") or f"/api/v2/{entry['kind'][:-1]}/")


def _export_rows(sections: Results, ref_missing: str) -> list[Row]:
    node = _get(sections, "export")
    if not node:
        return []
    if "error" in node:
        return [Row("ExportDataset", _error(node), "", "", "≥ 200,000 images/s", "NO")]
    rows = []
    large = node["large"]
    rate = large["images_per_s"]
    rows.append(
        Row(
            f"ExportDataset {large['images']:,} images (stream)",
            f"{large['median_seconds']:.2f} s ({rate:,.0f} images/s)",
            "–",
            "",
            "≥ 200,000 images/s",
            _met(rate, lambda v: v >= 200_000),
        )
    )
    compare = node["compare"]
    ours = compare["ours"]
    ref = compare.get("reference")
    rows.append(
        Row(
            f"ExportDataset {ours['images']:,} images (reference: GET …/export/)",
            f"{ours['median_seconds']:.2f} s ({ours['images_per_s']:,.0f} images/s)",
            (
                f"{ref['median_seconds']:.2f} s ({ref['images_per_s']:,.0f} images/s)"
                if ref
                else ref_missing or "–"
            ),
            times(compare.get("reference_over_ours")) if ref else "",
            "",
            "",
        )
    )
    return rows


def _section_errors(sections: Results) -> list[Row]:
    return [
        Row(f"[{name}] section", _error(entry), "", "", "", "")
        for name, entry in sections.items()
        if isinstance(entry, Mapping) and "error" in entry
    ]


def _delay_rows(sections: Results) -> list[Row]:
    delay = _get(sections, "delay")
    if not delay:
        return []
    label = "ListProjects delay added by a concurrent AddImages of 100,000"
    if "error" in delay:
        return [Row(label, _error(delay), "", "", "", "")]
    during, alone = delay["list_projects_during"], delay["list_projects_alone"]
    ours = (
        f"{_fmt(delay['added_delay_ms'], 'ms', 0)} (max {_fmt(during['max_ms'], 'ms', 0)}, "
        f"p50 {_fmt(during['p50_ms'], 'ms', 1)} vs {_fmt(alone['p50_ms'], 'ms', 1)} alone)"
    )
    return [Row(label, ours, "–", "", "", "")]


def summary_rows(sections: Results, reference_problem: str | None = None) -> list[Row]:
    """``reference_problem``: why fractal-server did not run (its cells then say so)."""
    missing = "not run (see above)" if reference_problem else ""
    return [
        *_section_errors(sections),
        *_list_projects_rows(sections, missing),
        *_images_rows(sections, missing),
        *_query_rows(sections, missing),
        *_jobs_rows(sections, missing),
        *_lists_rows(sections, missing),
        *_export_rows(sections, missing),
        *_delay_rows(sections),
    ]


def rows_as_dicts(rows: list[Row]) -> list[dict[str, str]]:
    return [asdict(row) for row in rows]


def format_table(rows: list[Row]) -> str:
    header = HEADER
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in Row.__dataclass_fields__]

    def line(row: Row) -> str:
        cells = [
            getattr(row, f).ljust(w) for f, w in zip(Row.__dataclass_fields__, widths, strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
