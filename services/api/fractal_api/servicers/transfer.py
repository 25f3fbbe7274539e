"""ExportDataset and ImportDataset: a dataset with its whole image list, out and in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fractal.v2 import dataset_service_pb2 as dpb
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.models import Dataset
from fractal_api.servicers.images import checked_images
from fractal_api.store import datasets, images, projects, requests
from fractal_api.views import dataset_view
from fractal_grpc.convert import fill_filters
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import InvalidArgument, Violations, invalid_field
from fractal_grpc.grpckit.interceptors import Encoded
from fractal_grpc.images.wire import ImageEncoder

EXPORT_BATCH = 10_000
MAX_IMPORT_IMAGES = 1_000_000
_HEADER_FIELDS = ("project_id", "name", "zarr_dir", "request_id")


async def export(
    ctx: ApiContext, request: dpb.ExportDatasetRequest, user_id: int
) -> AsyncIterator[Encoded]:
    """The dataset's header, then its images in batches, all from one snapshot."""
    async with ctx.sessions() as session:
        # One snapshot for the header and every batch (a write meanwhile is wholly in or out).
        await session.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )
        dataset = await projects.dataset_checked(
            session, request.project_id, request.dataset_id, user_id
        )
        first = dpb.ExportDatasetResponse(
            name=dataset.name, zarr_dir=dataset.zarr_dir, image_count=dataset.image_count
        )
        fill_filters(first.filters, dataset.filters)
        # Each message is the bytes written by the encoder (the header's, then the images'),
        # sent as they are: several times the rate of filling images one by one, and no
        # message is built only to be serialized again.
        header: bytes | None = first.SerializeToString()
        encoder = ImageEncoder(dpb.ExportDatasetResponse.IMAGES_FIELD_NUMBER)
        async for rows in images.rows_in_batches(session, dataset.id, EXPORT_BATCH):
            blob = encoder.encode(rows)
            if header is not None:
                blob, header = header + blob, None
            yield Encoded(blob)
        if header is not None:  # no images
            yield Encoded(header)


async def _gathered(stream: AsyncIterator[dpb.ImportDatasetRequest]) -> dpb.ImportDatasetRequest:
    """The stream as one request: the first message's header and every message's images."""
    merged: dpb.ImportDatasetRequest | None = None
    async for message in stream:
        if merged is None:
            merged = dpb.ImportDatasetRequest()
            merged.CopyFrom(message)
        else:
            header = [n for n in _HEADER_FIELDS if getattr(message, n)]
            if message.HasField("filters"):
                header.append("filters")
            if header:
                raise invalid_field(header[0], "only the first message of the stream carries it")
            merged.images.extend(message.images)
        if len(merged.images) > MAX_IMPORT_IMAGES:
            raise InvalidArgument(
                f"images: at most {MAX_IMPORT_IMAGES} images per import",
                violations=[("images", f"at most {MAX_IMPORT_IMAGES} images per import")],
            )
    if merged is None:
        raise invalid_field("project_id", "the stream carried no message")
    return merged


async def import_(
    ctx: ApiContext, stream: AsyncIterator[dpb.ImportDatasetRequest], user_id: int
) -> dpb.ImportDatasetResponse:
    request = await _gathered(stream)
    violations = Violations()
    if request.project_id <= 0:
        violations.add("project_id", "must be positive")
    name = validation.name(request.name, "name", violations)
    zarr_dir = validation.url(request.zarr_dir, "zarr_dir", violations)
    filters = validation.filters(request.filters, "filters", violations)
    violations.raise_if_any()
    records = await asyncio.to_thread(checked_images, request.images, zarr_dir)

    async with transaction(ctx.sessions) as session:
        await projects.get_checked(session, request.project_id, user_id)

        async def create() -> Dataset:
            dataset = await datasets.create(
                session,
                project_id=request.project_id,
                name=name,
                zarr_dir=zarr_dir,
                filters=filters,
            )
            await images.append(session, dataset, records)
            await session.refresh(dataset)
            return dataset

        dataset = await requests.once(
            session,
            user_id,
            request,
            create=create,
            replay=lambda earlier: projects.dataset_checked(
                session, request.project_id, earlier, user_id
            ),
        )
    ctx.statistics.rows_written(len(records))
    return dpb.ImportDatasetResponse(dataset=dataset_view(dataset))
