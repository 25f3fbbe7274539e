"""Task and workflow-task rules of the reference (§3.2), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_grpc.workflows import (
    command_violation,
    initial_wftask_fields,
    may_edit_task,
    permutation_violations,
    reserved_key_violations,
    source_violations,
    task_field_violations,
    task_in_use_message,
    task_type,
    updated_wftask_fields,
    wftask_type_violations,
)


@pytest.mark.parametrize(
    ("non_parallel", "parallel", "expected"),
    [
        ("cmd", None, "non_parallel"),
        (None, "cmd", "parallel"),
        ("cmd", "cmd", "compound"),
        ("", "cmd", "parallel"),
    ],
)
def test_task_type_follows_from_the_commands(
    non_parallel: str | None, parallel: str | None, expected: str
) -> None:
    assert task_type(non_parallel, parallel) == expected


@pytest.mark.parametrize(
    ("kind", "given", "refused"),
    [
        ("parallel", ["meta_parallel", "args_schema_parallel"], []),
        ("parallel", ["args_schema_non_parallel"], ["args_schema_non_parallel"]),
        ("parallel", ["meta_non_parallel"], ["meta_non_parallel"]),
        ("parallel", ["command_non_parallel"], ["command_non_parallel"]),
        ("non_parallel", ["args_schema_non_parallel", "meta_non_parallel"], []),
        ("non_parallel", ["args_schema_parallel"], ["args_schema_parallel"]),
        ("non_parallel", ["meta_parallel"], ["meta_parallel"]),
        ("non_parallel", ["command_parallel"], ["command_parallel"]),
        ("compound", ["command_parallel", "meta_non_parallel", "args_schema_parallel"], []),
    ],
)
def test_task_fields_of_the_other_side_are_refused(
    kind: str, given: list[str], refused: list[str]
) -> None:
    assert [field for field, _ in task_field_violations(kind, given)] == refused


@pytest.mark.parametrize(
    ("given", "refused"),
    [
        ({"args_parallel": {"a": 1}}, []),
        ({"args_parallel": {"zarr_url": "/x"}}, [("args_parallel", "zarr_url")]),
        (
            {"args_non_parallel": {"zarr_urls": [], "zarr_dir": "/z", "k": 1}},
            [("args_non_parallel", "zarr_dir, zarr_urls")],
        ),
        ({"args_parallel": {"init_args": {}}}, [("args_parallel", "init_args")]),
        # Meta may use any key.
        ({"meta_parallel": {"zarr_url": 1}}, []),
        ({"args_parallel": None}, []),
    ],
)
def test_reserved_args_keys(given: dict[str, Any], refused: list[tuple[str, str]]) -> None:
    found = reserved_key_violations(given)
    assert [field for field, _ in found] == [field for field, _ in refused]
    for (_, why), (_, keys) in zip(found, refused, strict=True):
        assert keys in why


@pytest.mark.parametrize(
    ("kind", "given", "refused"),
    [
        ("parallel", {"args_parallel": {}, "meta_parallel": {"cpus": 1}}, []),
        ("parallel", {"args_non_parallel": {}}, ["args_non_parallel"]),
        ("parallel", {"meta_non_parallel": {"x": 1}}, ["meta_non_parallel"]),
        ("non_parallel", {"args_parallel": {"a": 1}}, ["args_parallel"]),
        ("non_parallel", {"meta_parallel": {}}, ["meta_parallel"]),
        ("non_parallel", {"args_non_parallel": {"a": 1}, "args_parallel": None}, []),
        ("compound", {"args_parallel": {"a": 1}, "meta_non_parallel": {"b": 2}}, []),
    ],
)
def test_workflow_task_fields_of_the_other_side_are_refused(
    kind: str, given: dict[str, Any], refused: list[str]
) -> None:
    assert [field for field, _ in wftask_type_violations(kind, given)] == refused


@pytest.mark.parametrize(
    ("task_meta", "given", "expected"),
    [
        # Args exactly as given; nothing else is added (no schema defaults).
        (
            ({}, {}),
            {"args_parallel": {"b": "y"}},
            {"args_parallel": {"b": "y"}, "args_non_parallel": None},
        ),
        (({}, {}), {"args_parallel": {}}, {"args_parallel": None}),
        # Meta: the task's meta updated with the given meta.
        (
            ({"a": 1}, {"cpus": 1, "mem": 2}),
            {"meta_parallel": {"mem": 10}},
            {"meta_non_parallel": {"a": 1}, "meta_parallel": {"cpus": 1, "mem": 10}},
        ),
        (({}, None), {}, {"meta_non_parallel": None, "meta_parallel": None}),
    ],
)
def test_what_a_new_workflow_task_stores(
    task_meta: tuple[dict[str, Any] | None, dict[str, Any] | None],
    given: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    stored = initial_wftask_fields(task_meta[0], task_meta[1], given)
    assert {key: stored[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("current", "given", "problems"),
    [
        ([1, 2, 3], [3, 1, 2], []),
        ([], [], []),
        ([1, 2, 3], [1, 2], ["missing ids: 3"]),
        ([1, 2], [1, 2, 9], ["not workflow tasks of this workflow: 9"]),
        ([1, 2], [1, 1, 2], ["repeated ids: 1"]),
        ([1, 2], [1, 1], ["repeated ids: 1", "missing ids: 2"]),
    ],
)
def test_reorder_needs_a_permutation(
    current: list[int], given: list[int], problems: list[str]
) -> None:
    found = permutation_violations(current, given)
    assert [why for _, why in found] == problems
    assert all(field == "reordered_workflow_task_ids" for field, _ in found)


@pytest.mark.parametrize(
    ("owner", "me", "superuser", "allowed"),
    [
        ("alice", "alice", False, True),
        ("alice", "bob", False, False),
        ("alice", None, False, False),
        (None, "alice", False, False),  # a collected task: superusers only
        (None, None, True, True),
        ("alice", "bob", True, True),
    ],
)
def test_who_may_edit_a_task(
    owner: str | None, me: str | None, superuser: bool, allowed: bool
) -> None:
    assert may_edit_task(owner, me, superuser) is allowed


@pytest.mark.parametrize(
    ("value", "problem"),
    [("/bin/true -x", None), ("  ", "must not be empty"), ("python 'open", "not a valid")],
)
def test_command_lines(value: str, problem: str | None) -> None:
    found = command_violation("command_parallel", value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found[0] == "command_parallel" and problem in found[1]


@pytest.mark.parametrize(
    ("mine", "others", "expected"),
    [
        ([(1, 2, "wf")], 0, "in your workflows: project 1, workflow 2 ('wf')."),
        ([], 3, "in 3 workflow(s) of other users."),
        ([(1, 2, "a")], 1, "('a') and in 1 workflow(s) of other users."),
    ],
)
def test_task_in_use_message(mine: list[tuple[int, int, str]], others: int, expected: str) -> None:
    assert task_in_use_message(7, mine, others).endswith(expected)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # Args replaced exactly as given; empty clears them.
        ({"args_parallel": {"c": 2}}, {"args_parallel": {"c": 2}}),
        ({"args_non_parallel": {}}, {"args_non_parallel": None}),
        # Meta replaced as given (not merged with the task's meta).
        ({"meta_parallel": {"mem": 5}}, {"meta_parallel": {"mem": 5}}),
        # Unset fields are kept.
        ({"args_parallel": None, "meta_parallel": None}, {}),
    ],
)
def test_what_an_update_writes(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert updated_wftask_fields(given) == expected


@pytest.mark.parametrize(
    ("wanted", "found", "problems"),
    [
        (["a", "b", "a"], [("a", 1), ("b", 2)], []),
        (["a", "x"], [("a", 1)], [("workflow.task_list[1].task_source", "found 0 tasks")]),
        (["a"], [("a", 1), ("a", 2)], [("workflow.task_list[0].task_source", "found 2 tasks")]),
    ],
)
def test_import_resolves_each_source_to_exactly_one_task(
    wanted: list[str], found: list[tuple[str, int]], problems: list[tuple[str, str]]
) -> None:
    got = source_violations(wanted, found)
    assert [f for f, _ in got] == [f for f, _ in problems]
    for (_, why), (_, words) in zip(got, problems, strict=True):
        assert words in why
