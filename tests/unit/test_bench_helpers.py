"""The benchmark's pure helpers: turn order, ratios, the row-copy SQL, the one image helper,
and the summary table when the reference did not run."""

from __future__ import annotations

import pytest
from bench.client import QUERY_FILTERS_JSON, image_record, to_proto_filters, to_proto_image
from bench.interleave import ratio, turn_order
from bench.lists_bench import clone_children_sql, clone_sql
from bench.report import format_table, speedup, summary_rows, times


@pytest.mark.parametrize(
    ("names", "index", "expected"),
    [
        (["a", "b"], 0, ["a", "b"]),
        (["a", "b"], 1, ["b", "a"]),
        (["a", "b"], 2, ["a", "b"]),
        (["a", "b", "c"], 1, ["b", "c", "a"]),
        (["a", "b", "c"], 2, ["c", "a", "b"]),
        ([], 3, []),
    ],
)
def test_turn_order_rotates_who_goes_first(
    names: list[str], index: int, expected: list[str]
) -> None:
    assert turn_order(names, index) == expected


def test_every_side_goes_first_equally_often() -> None:
    firsts = [turn_order(["ours", "reference"], i)[0] for i in range(10)]
    assert firsts.count("ours") == firsts.count("reference") == 5


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(3.0, 2.0, 1.5), (1.0, 3.0, 0.333), (None, 1.0, None), (1.0, None, None), (1.0, 0.0, None)],
)
def test_ratio(a: float | None, b: float | None, expected: float | None) -> None:
    assert ratio(a, b) == expected


def test_speedup_and_its_text() -> None:
    assert speedup(10.0, 2.0) == 5.0
    assert speedup(None, 2.0) is None
    assert times(None) == "–"
    assert times(1.234) == "×1.23"
    assert times(123.4) == "×123"


def test_clone_sql_copies_every_column_but_id_and_applies_overrides() -> None:
    sql = clone_sql("api.tasks", ["id", "name", "source", "order"], {"source": "src.source || g"})
    assert sql.startswith('INSERT INTO api.tasks ("name", "source", "order") SELECT ')
    assert 'src."name", src.source || g, src."order"' in sql
    assert "generate_series(1, $1::int) AS g WHERE src.id = $2" in sql
    assert '"id"' not in sql


def test_clone_children_sql_points_copies_at_each_parent() -> None:
    sql = clone_children_sql(
        "api.workflow_tasks", ["id", "workflow_id", "task_id"], "workflow_id", "SELECT id FROM w"
    )
    assert '("workflow_id", "task_id") SELECT p.id, src."task_id"' in sql
    assert "(SELECT id FROM w) AS p WHERE src.id = $1" in sql


def test_one_image_helper_gives_the_same_image_to_both_systems() -> None:
    record = image_record("/z", 13)
    assert record == {
        "zarr_url": "/z/plate_00.zarr/A/02/13",
        "attributes": {"plate": "plate_00.zarr", "well": "A02", "acquisition": 1},
        "types": {"3D": False},
    }
    proto = to_proto_image(record)
    assert proto.zarr_url == record["zarr_url"]
    assert proto.attributes["acquisition"].number_value == 1
    assert proto.attributes["well"].string_value == "A02"
    assert dict(proto.types) == {"3D": False}
    filters = to_proto_filters(QUERY_FILTERS_JSON)
    assert filters.attributes["acquisition"].number_value == 1
    assert dict(filters.types) == {"3D": True}


def test_the_table_says_when_the_reference_did_not_run() -> None:
    sections = {
        "jobs": {
            "single_image": {
                "ours": {"median_seconds": 0.08, "server_median_seconds": 0.07, "runs": [{}]},
            },
            "medium": {"images": 100, "ours": {"median_seconds": 1.5}},
            "large": {
                "images": 1000,
                "ours": {"median_seconds": 19.0},
                "direct": {"median_seconds": 18.0},
                "ours_over_direct": 1.056,
            },
        }
    }
    rows = summary_rows(sections, "fractal-server 2.3.11 did not run here: no network")
    assert rows[0].benchmark == "Job, 1 image (median of 1)"
    assert rows[0].reference == "not run (see above)"
    assert rows[0].met == "yes"
    assert rows[3].met == "yes"
    assert "fractal-server 2.3.11" in format_table(rows).splitlines()[0]
