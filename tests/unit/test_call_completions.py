"""Completion records of task calls: written atomically, read back only for the same call."""

from __future__ import annotations

from pathlib import Path

import pytest

from fractal_runner.taskproc.calls import TaskCall
from fractal_runner.taskproc.completions import (
    Completion,
    load_completions,
    read_completion,
    record_completion,
)
from fractal_runner.taskproc.layout import CallPaths, parallel_prefix


def call(folder: Path, index: int = 0, command: str = "task", **args: object) -> TaskCall:
    return TaskCall(command, dict(args), CallPaths.build(folder, "0_t", parallel_prefix(0, index)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "0_t").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "output", [None, {}, {"image_list_updates": [{"zarr_url": "/z/a", "attributes": {"n": 1}}]}]
)
def test_a_recorded_call_reads_back_its_output(folder: Path, output: dict | None) -> None:
    c = call(folder, zarr_url="/z/a")
    assert read_completion(c) is None
    record_completion(c, output)
    assert read_completion(c) == Completion(output)
    # Written by rename: no temporary file is left beside it.
    assert sorted(p.name for p in c.paths.done.parent.iterdir()) == [c.paths.done.name]


def test_the_record_of_another_call_is_ignored(folder: Path) -> None:
    record_completion(call(folder, zarr_url="/z/a"), {"x": 1})
    assert read_completion(call(folder, zarr_url="/z/b")) is None  # other arguments
    assert read_completion(call(folder, command="other", zarr_url="/z/a")) is None
    # The same arguments in another order are the same call.
    record_completion(call(folder, 1, a=1, b=2), None)
    assert read_completion(call(folder, 1, b=2, a=1)) == Completion(None)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"version": 1}', b"\xff\xfe", b'{"version": 99, "digest": "x"}'],
)
def test_an_unreadable_record_means_not_completed(folder: Path, content: bytes) -> None:
    c = call(folder, zarr_url="/z/a")
    c.paths.done.write_bytes(content)
    assert read_completion(c) is None


def test_an_output_that_is_not_an_object_means_not_completed(folder: Path) -> None:
    c = call(folder, zarr_url="/z/a")
    record_completion(c, {"x": 1})
    c.paths.done.write_text(c.paths.done.read_text().replace('{"x": 1}', "[1]"))
    assert read_completion(c) is None


def test_a_leftover_temporary_file_is_not_a_record(folder: Path) -> None:
    c = call(folder, zarr_url="/z/a")
    (c.paths.done.parent / f".{c.paths.done.name}.tmp").write_text("{}")
    assert read_completion(c) is None


def test_load_completions_by_index(folder: Path) -> None:
    calls = [call(folder, i, zarr_url=f"/z/{i}") for i in range(4)]
    record_completion(calls[1], None)
    record_completion(calls[3], {"x": 3})
    assert load_completions(calls) == {1: Completion(None), 3: Completion({"x": 3})}


def test_a_record_that_cannot_be_written_raises(tmp_path: Path) -> None:
    c = call(tmp_path / "missing", zarr_url="/z/a")  # its folder does not exist
    with pytest.raises(OSError):
        record_completion(c, None)
