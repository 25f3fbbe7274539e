"""The SDK client with the calls the benchmarks repeat, and the benchmark data."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from fractal.v2 import (
    dataset_service_pb2,
    image_pb2,
    image_service_pb2,
    job_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_grpc.client import FractalClient


class ApiClient(FractalClient):
    """The SDK client plus the few calls the benchmarks repeat."""

    async def new_user(self) -> ApiClient:
        """Create a verified user with a username (as this superuser) and log in as it."""
        email = f"bench-{secrets.token_hex(4)}@example.org"
        await self.create_user(email, "bench-pw", username=email.split("@")[0], verified=True)
        return await ApiClient.login(self.channel, email, "bench-pw")

    async def new_project(self, name: str | None = None) -> int:
        resp = await self.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=name or f"p-{secrets.token_hex(3)}"),
            metadata=self.md,
        )
        return int(resp.project.id)

    async def new_dataset(self, project_id: int, zarr_dir: str) -> int:
        resp = await self.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project_id, name=f"ds-{secrets.token_hex(3)}", zarr_dir=zarr_dir
            ),
            metadata=self.md,
        )
        return int(resp.dataset.id)

    async def add_images(
        self, project_id: int, dataset_id: int, images: list[image_pb2.Image]
    ) -> int:
        resp = await self.images.AddImages(
            image_service_pb2.AddImagesRequest(
                project_id=project_id, dataset_id=dataset_id, images=images
            ),
            metadata=self.md,
        )
        return int(resp.added_count)

    async def new_parallel_task(self, command: str, meta: Mapping[str, Any]) -> int:
        req = task_service_pb2.CreateTaskRequest(
            name=f"bench-trivial-{secrets.token_hex(3)}",
            command_parallel=command,
            source=f"bench-{secrets.token_hex(3)}",
            meta_parallel=to_struct(meta),
        )
        resp = await self.tasks.CreateTask(req, metadata=self.md)
        return int(resp.task.id)

    async def new_workflow(
        self, project_id: int, task_id: int, meta: Mapping[str, Any], tasks: int = 1
    ) -> int:
        """A workflow of ``tasks`` workflow tasks, each the task ``task_id``."""
        wf = await self.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(
                project_id=project_id, name=f"wf-{secrets.token_hex(3)}"
            ),
            metadata=self.md,
        )
        workflow_id = int(wf.workflow.id)
        for _ in range(tasks):
            await self.workflows.CreateWorkflowTask(
                workflow_service_pb2.CreateWorkflowTaskRequest(
                    project_id=project_id,
                    workflow_id=workflow_id,
                    task_id=task_id,
                    meta_parallel=to_struct(meta),
                ),
                metadata=self.md,
            )
        return workflow_id

    async def submit_and_wait(
        self, project_id: int, workflow_id: int, dataset_id: int, watch_seconds: float
    ) -> job_pb2.Job:
        """SubmitJob, then WatchJob until the job is DONE or FAILED; returns the last state."""
        submitted = await self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=project_id, workflow_id=workflow_id, dataset_id=dataset_id
            ),
            metadata=self.md,
        )
        job_id = submitted.job.id
        last = submitted.job
        stream = self.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(project_id=project_id, job_id=job_id),
            metadata=self.md,
            timeout=watch_seconds,
        )
        async for update in stream:
            last = update.job
            if last.status in (job_pb2.JOB_STATUS_DONE, job_pb2.JOB_STATUS_FAILED):
                stream.cancel()
                break
        return last


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


# --- benchmark images ------------------------------------------------------------------------
#
# Image i of a dataset: plate_{i // 100000}.zarr/{row}/{col}/{i}, with attributes
#   plate       = "plate_NN.zarr"    (10 values per 1M images)
#   well        = "B03"              (384 values: wells of a 384-well plate, 8 images each)
#   acquisition = i % 4              (int)
# and one type, "3D" = (i // 4) % 2 == 0. QUERY_FILTERS (acquisition == 1 and 3D) matches
# exactly one image in eight, spread evenly over the list.
#
# Every benchmark image and filter is made here, first as plain JSON (what the reference's REST
# API takes), then turned into our protos by ``to_proto_image`` / ``to_proto_filters``: the only
# two functions that know how an attribute value is written in our protos.

ROWS = "ABCDEFGHIJKLMNOP"
WELLS = [f"{row}{col:02d}" for row in ROWS for col in range(1, 25)]
QUERY_FILTERS_JSON: dict[str, dict[str, Any]] = {
    "attributes": {"acquisition": 1},
    "types": {"3D": True},
}
QUERY_SELECTIVITY = 1 / 8


def image_record(zarr_dir: str, i: int) -> dict[str, Any]:
    """Image ``i`` of a benchmark dataset, as JSON: zarr_url, attributes, types."""
    well = WELLS[(i // 8) % len(WELLS)]
    plate = f"plate_{i // 100_000:02d}.zarr"
    return {
        "zarr_url": f"{zarr_dir}/{plate}/{well[0]}/{well[1:]}/{i}",
        "attributes": {"plate": plate, "well": well, "acquisition": i % 4},
        "types": {"3D": (i // 4) % 2 == 0},
    }


def image_records(zarr_dir: str, start: int, count: int) -> list[dict[str, Any]]:
    return [image_record(zarr_dir, i) for i in range(start, start + count)]


def _set_attribute(target: struct_pb2.Value, value: Any) -> None:
    """One attribute value in the proto form (google.protobuf.Value: a number is a double)."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    else:
        target.string_value = str(value)


def to_proto_image(record: Mapping[str, Any]) -> image_pb2.Image:
    image = image_pb2.Image(zarr_url=record["zarr_url"])
    attributes = image.attributes
    for key, value in record["attributes"].items():
        _set_attribute(attributes[key], value)
    for key, flag in record["types"].items():
        image.types[key] = flag
    return image


def to_proto_filters(filters: Mapping[str, Any]) -> image_pb2.Filters:
    proto = image_pb2.Filters()
    for key, value in filters.get("attributes", {}).items():
        _set_attribute(proto.attributes[key], value)
    for key, flag in filters.get("types", {}).items():
        proto.types[key] = flag
    return proto


QUERY_FILTERS = to_proto_filters(QUERY_FILTERS_JSON)


def make_images(zarr_dir: str, start: int, count: int) -> list[image_pb2.Image]:
    return [to_proto_image(image_record(zarr_dir, i)) for i in range(start, start + count)]
