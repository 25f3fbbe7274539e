"""The fault suite's workload: ``JOBS`` concurrent jobs, one per dataset (its own project),
each a workflow of two parallel tasks (marks ``a`` then ``b``) over ``IMAGES`` images, run
by ``fault_task.py``, which logs every invocation.

The fault lands at a chosen point: every job has task ``a`` applied and task ``b`` half done —
its first calls completed, its last ones in flight, held at a gate (a file the test creates).
So every fault finds completed calls, calls in flight and a result report still to come, in
every job at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from fault_checks import (
    CallKey,
    Figures,
    calls_by_key,
    completed_reruns,
    duplicate_history,
    expected_facets,
    facet_mismatches,
    image_defects,
    in_flight_at,
    in_flight_reruns,
    job_counts,
    never_completed,
    read_invocations,
)
from google.protobuf import struct_pb2

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.convert import attributes_to_python, struct_dict
from helpers import ApiClient, history_status

#: How many jobs each scenario runs at once (one dataset each), and images per dataset.
JOBS = 10
IMAGES = 4
#: Concurrent jobs of a SLURM scenario: each holds a 2-cpu SLURM job at the gate, on the
#: 8-cpu local cluster that other tests and benchmarks share.
SLURM_JOBS = 2
TASK = Path(__file__).with_name("fault_task.py")
MARKS = ("a", "b")
#: How many calls of one task run at once: with 4 images, two rounds per task.
CALLS_AT_ONCE = 2
CALL_SECONDS = 0.5
#: Generous bounds for things that take seconds (a loaded 2-core machine).
REACH_FAULT_POINT_SECONDS = 180.0
END_SECONDS = 180.0


@dataclass
class FaultJob:
    project_id: int
    dataset_id: int
    workflow_id: int
    zarr_urls: list[str]
    job_id: int = 0

    def gated(self) -> list[str]:
        """Task b's calls held at the gate: the second half of the images."""
        return self.zarr_urls[len(self.zarr_urls) // 2 :]


#: The meta of both tasks on the local executor: two calls at once.
LOCAL_META: dict[str, Any] = {"parallel_tasks_per_job": CALLS_AT_ONCE}


class FaultJobs:
    """``python`` runs the task (on SLURM: the cluster user's); ``meta`` is both tasks'
    meta_parallel (on SLURM none: the batching heuristics of the test config put two calls in
    each SLURM job, so the gated half of task b is one SLURM job in flight)."""

    def __init__(
        self,
        client: ApiClient,
        root: Path,
        python: str = sys.executable,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.c = client
        self.root = root
        self.python = python
        self.meta = LOCAL_META if meta is None else meta
        self.invocation_log = root / "invocations.jsonl"
        self.gate = root / "gate"
        self.jobs: list[FaultJob] = []

    # --- setup -------------------------------------------------------------------------

    async def build(self, jobs: int, images: int) -> FaultJobs:
        task_ids = {}
        for mark in MARKS:
            resp = await self.c.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    name=f"mark_{mark}",
                    source=f"fault-{mark}-{self.root.name}",
                    command_parallel=f"{self.python} {TASK}",
                    input_types={"a_done": True} if mark == "b" else {},
                ),
                metadata=self.c.md,
            )
            task_ids[mark] = resp.task.id
        self.jobs = list(
            await asyncio.gather(*(self._build_one(i, images, task_ids) for i in range(jobs)))
        )
        return self

    async def _build_one(self, index: int, images: int, task_ids: dict[str, int]) -> FaultJob:
        project = await self.c.new_project(f"fault-{index}")
        zarr_dir = str(self.root / "zarr" / f"d{index}")
        ds = await self.c.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project.id, name=f"d{index}", zarr_dir=zarr_dir
            ),
            metadata=self.c.md,
        )
        urls = [f"{zarr_dir}/img{i}" for i in range(images)]
        await self.c.images.AddImages(
            image_service_pb2.AddImagesRequest(
                project_id=project.id,
                dataset_id=ds.dataset.id,
                images=[
                    image_pb2.Image(
                        zarr_url=url,
                        attributes={"well": struct_pb2.Value(string_value=f"A{i % 2}")},
                    )
                    for i, url in enumerate(urls)
                ],
            ),
            metadata=self.c.md,
        )
        wf = await self.c.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
            metadata=self.c.md,
        )
        job = FaultJob(project.id, ds.dataset.id, wf.workflow.id, urls)
        for mark in MARKS:
            req = workflow_service_pb2.CreateWorkflowTaskRequest(
                project_id=project.id, workflow_id=wf.workflow.id, task_id=task_ids[mark]
            )
            req.args_parallel.update(
                {
                    "mark": mark,
                    "invocation_log": str(self.invocation_log),
                    "sleep_seconds": CALL_SECONDS,
                    "gate_file": str(self.gate),
                    "gated": job.gated() if mark == "b" else [],
                }
            )
            req.meta_parallel.update(self.meta)
            await self.c.workflows.CreateWorkflowTask(req, metadata=self.c.md)
        return job

    async def submit(self) -> None:
        async def one(job: FaultJob) -> None:
            resp = await self.c.jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    project_id=job.project_id,
                    workflow_id=job.workflow_id,
                    dataset_id=job.dataset_id,
                ),
                metadata=self.c.md,
            )
            job.job_id = resp.job.id

        await asyncio.gather(*(one(job) for job in self.jobs))

    # --- the fault point and the gate -----------------------------------------------------

    def gated_calls(self) -> set[CallKey]:
        return {(job.job_id, "b", url) for job in self.jobs for url in job.gated()}

    async def reach_fault_point(self) -> None:
        """Wait until every gated call has started (so every other call of task b, and all of
        task a, has completed)."""
        wanted = self.gated_calls()
        deadline = time.monotonic() + REACH_FAULT_POINT_SECONDS
        while True:
            started = {i.key for i in read_invocations(self.invocation_log) if i.event == "start"}
            if wanted <= started:
                return
            if time.monotonic() > deadline:
                statuses = await self.statuses()
                raise AssertionError(
                    f"the jobs did not reach the fault point in {REACH_FAULT_POINT_SECONDS:.0f}s: "
                    f"{len(wanted - started)} of {len(wanted)} gated calls not started; "
                    f"job statuses {statuses}"
                )
            await asyncio.sleep(0.1)

    def in_flight_pids(self, instant: float) -> dict[CallKey, int]:
        return in_flight_at(calls_by_key(read_invocations(self.invocation_log)), instant)

    def open_gate(self) -> None:
        self.gate.touch()

    # --- the end ---------------------------------------------------------------------------

    async def statuses(self) -> dict[int, str]:
        result = {}
        for job in self.jobs:
            got = await self.c.jobs.GetJob(
                job_service_pb2.GetJobRequest(project_id=job.project_id, job_id=job.job_id),
                metadata=self.c.md,
            )
            result[job.job_id] = job_pb2.JobStatus.Name(got.job.status).removeprefix("JOB_STATUS_")
        return result

    async def wait_ended(self) -> dict[int, str]:
        """Every job's final status; SUBMITTED for those still running at the deadline. Errors
        of the calls are tolerated until the deadline (the fault may not be over for api)."""
        deadline = time.monotonic() + END_SECONDS
        statuses: dict[int, str] = {}
        while time.monotonic() < deadline:
            try:
                statuses = await self.statuses()
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)
                continue
            if all(status != "SUBMITTED" for status in statuses.values()):
                break
            await asyncio.sleep(0.3)
        return statuses

    async def measure(self, scenario: str, fault_time: float) -> Figures:
        figures = Figures(scenario)
        statuses = await self.wait_ended()
        counts = job_counts(statuses)
        figures.done, figures.failed, figures.stuck = (
            counts["DONE"],
            counts["FAILED"],
            counts["stuck"],
        )
        for job in self.jobs:
            if statuses.get(job.job_id) == "FAILED":
                got = await self.c.jobs.GetJob(
                    job_service_pb2.GetJobRequest(project_id=job.project_id, job_id=job.job_id),
                    metadata=self.c.md,
                )
                figures.notes.append(f"job {job.job_id} FAILED: {got.job.log[:300]}")
            await self._measure_dataset(job, figures)

        calls = calls_by_key(read_invocations(self.invocation_log))
        expected = [
            (job.job_id, m, url) for job in self.jobs for m in MARKS for url in job.zarr_urls
        ]
        rerun = completed_reruns(calls, fault_time)
        flying = in_flight_reruns(calls, fault_time)
        missing = never_completed(calls, expected)
        figures.completed_reruns = len(rerun)
        figures.in_flight = len(flying)
        figures.in_flight_max_reruns = max(flying.values(), default=0)
        if rerun:
            figures.notes.append(f"completed calls re-run (first 5): {_calls(rerun[:5])}")
        if missing:
            figures.notes.append(f"calls never completed (first 5): {_calls(missing[:5])}")
        return figures

    async def _measure_dataset(self, job: FaultJob, figures: Figures) -> None:
        got = await self.c.datasets.GetDataset(
            dataset_service_pb2.GetDatasetRequest(
                project_id=job.project_id, dataset_id=job.dataset_id
            ),
            metadata=self.c.md,
        )
        history = [
            (int(struct_dict(h.workflowtask)["id"]), history_status(h.status))
            for h in got.dataset.history
        ]
        figures.duplicate_history += duplicate_history(history)

        page = await self._query(job)
        images = [_image_dict(image) for image in page.images]
        defects = image_defects(images, job.zarr_urls, MARKS)
        figures.image_defects += len(defects)
        if defects:
            root = f"{self.root}/zarr/"
            figures.notes.append(
                f"dataset {job.dataset_id}: {[d.replace(root, '') for d in defects[:5]]}"
            )

        attribute_counts, type_counts = expected_facets(images)
        listed_attributes = {
            (key, value) for key, values in page.attributes.items() for value in values
        }
        mismatches = []
        if listed_attributes != set(attribute_counts):
            mismatches.append(f"attribute facets {listed_attributes} != {set(attribute_counts)}")
        if set(page.types) != set(type_counts):
            mismatches.append(f"type facets {sorted(page.types)} != {sorted(type_counts)}")
        totals = {}
        for key, value in attribute_counts:
            filters = image_pb2.Filters(attributes={key: _attribute(value)})
            totals[(key, value)] = (await self._query(job, filters)).total_count
        mismatches += facet_mismatches(attribute_counts, totals, "attribute")
        type_totals = {}
        for key in type_counts:
            filters = image_pb2.Filters(types={key: True})
            type_totals[key] = (await self._query(job, filters)).total_count
        mismatches += facet_mismatches(type_counts, type_totals, "type")
        figures.facet_mismatches += len(mismatches)
        if mismatches:
            figures.notes.append(f"dataset {job.dataset_id} facets: {mismatches[:5]}")

    async def _query(
        self, job: FaultJob, filters: image_pb2.Filters | None = None
    ) -> image_service_pb2.QueryImagesResponse:
        return await self.c.images.QueryImages(
            image_service_pb2.QueryImagesRequest(
                project_id=job.project_id,
                dataset_id=job.dataset_id,
                filters=filters,
                page_size=1000,
            ),
            metadata=self.c.md,
        )


def _calls(keys: list[CallKey]) -> str:
    """``job 3 b d2/img0, ...``: call keys without the temporary directory."""
    return ", ".join(f"job {job} {mark} {'/'.join(url.split('/')[-2:])}" for job, mark, url in keys)


def _attribute(value: Any) -> struct_pb2.Value:
    assert isinstance(value, str), value  # the suite's attributes are all strings
    return struct_pb2.Value(string_value=value)


def _image_dict(image: image_pb2.Image) -> dict[str, Any]:
    return {
        "zarr_url": image.zarr_url,
        "attributes": attributes_to_python(image.attributes),
        "types": dict(image.types),
    }
