"""The runner's progress reporting (fractal_runner.progress): counts from completion records,
what a part that ends, fails or is stopped adds, and reports that fail are dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal_runner.progress import TaskProgress, count_done
from fractal_runner.taskproc import CallPaths, JobStopped, TaskCall, TaskExecutionError


def calls(job_dir: Path, n: int, subfolder: str = "1_t") -> list[TaskCall]:
    (job_dir / subfolder).mkdir(exist_ok=True)
    return [
        TaskCall("cmd", {"i": i}, CallPaths.build(job_dir, subfolder, f"1_par_{i:07d}"))
        for i in range(n)
    ]


def test_count_done_counts_only_the_calls_records(tmp_path: Path) -> None:
    mine = calls(tmp_path, 4)
    assert count_done(mine) == 0
    mine[0].paths.done.write_text("{}")
    mine[3].paths.done.write_text("{}")
    (tmp_path / "1_t" / "1_par_0000009.done.json").write_text("{}")  # not one of them
    mine[1].paths.log.write_text("")
    assert count_done(mine) == 2
    gone = TaskCall("cmd", {}, CallPaths.build(tmp_path / "missing", "0_t", "0"))
    assert count_done([gone]) == 0


class Sink:
    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[int, int, int]] = []
        self.fail = fail

    async def __call__(self, counts: pb.CallCounts) -> None:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("api is slow")
        self.sent.append((counts.done, counts.failed, counts.total))


async def test_a_part_reports_records_as_they_appear(tmp_path: Path) -> None:
    sink = Sink()
    progress = TaskProgress(sink, interval=0.01)
    await progress.send()
    first = calls(tmp_path, 1, "0_init")
    async with progress.part(first, more_total=1):
        pass
    parallel = calls(tmp_path, 3)
    async with progress.part(parallel, more_total=3):
        for call in parallel:
            await asyncio.sleep(0.05)
            call.paths.done.write_text("{}")
        await asyncio.sleep(0.05)
    assert (progress.counts().done, progress.counts().total) == (4, 4)
    await progress.send()
    assert sink.sent[0] == (0, 0, 0)
    assert (1, 0, 4) in sink.sent and (3, 0, 4) in sink.sent
    assert sink.sent[-1] == (4, 0, 4)
    assert len(sink.sent) == len(set(sink.sent))  # an unchanged count is not sent again


@pytest.mark.parametrize(
    ("error", "failed"),
    [(TaskExecutionError("exit 1"), 1), (JobStopped(), 0)],
)
async def test_a_part_that_raises(tmp_path: Path, error: Exception, failed: int) -> None:
    progress = TaskProgress(Sink(), interval=10)
    part = calls(tmp_path, 5)
    part[0].paths.done.write_text("{}")
    part[2].paths.done.write_text("{}")
    with pytest.raises(type(error)):
        async with progress.part(part, more_total=5):
            raise error
    counts = progress.counts()
    assert (counts.done, counts.failed, counts.total) == (2, failed, 5)


async def test_a_report_that_fails_is_dropped_and_sent_again(tmp_path: Path) -> None:
    sink = Sink(fail=1)
    progress = TaskProgress(sink, interval=10)
    await progress.send()  # lost
    await progress.send()  # the same counts, sent now
    assert sink.sent == [(0, 0, 0)]

    async def refused(counts: pb.CallCounts) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )

    await TaskProgress(refused).send()  # no exception
