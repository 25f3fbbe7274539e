"""ImageService (reference §6.3), one row per image."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc.aio

from fractal.v2 import image_service_pb2 as pb
from fractal.v2 import image_service_pb2_grpc as rpc
from fractal_api import validation
from fractal_api.context import ApiContext
from fractal_api.store import images, projects
from fractal_api.store.facets import FacetEdit
from fractal_grpc.auth.principal import current_user
from fractal_grpc.convert import attributes_to_python, fill_image, fill_values
from fractal_grpc.data import rules
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import AlreadyExists, NotFound, Violations
from fractal_grpc.images.bitmaps import plan_filters
from fractal_grpc.images.changes import ImageRecord
from fractal_grpc.images.filters import validate_keys
from fractal_grpc.images.urls import normalize_url
from fractal_grpc.pagination import decode_token, encode_token, page_size, query_fingerprint

MAX_PAGE = 10_000


def _clean_keys(keys: Any) -> bool:
    """All keys already stripped and non-empty (the common case: no renaming needed)."""
    return all(key and key == key.strip() for key in keys)


def checked_images(images: Sequence[Any], zarr_dir: str) -> list[ImageRecord]:
    """Validate a batch (reference §6.3 rules); field names are built only for violations."""
    violations = Violations()
    records: list[ImageRecord] = []
    seen: set[str] = set()
    prefix = zarr_dir.rstrip("/") + "/"
    clean: set[str] = set()  # keys already seen stripped and non-empty (they repeat)
    for i, image in enumerate(images):
        try:
            url = normalize_url(image.zarr_url)
        except ValueError as exc:  # the field name is built only for a violation
            url = image.zarr_url
            violations.add(f"images[{i}].zarr_url", str(exc))
        if url == zarr_dir:
            violations.add(f"images[{i}].zarr_url", "cannot be equal to the dataset's zarr_dir")
        elif url.startswith("/") and not url.startswith(prefix):
            violations.add(f"images[{i}].zarr_url", f"must be inside zarr_dir {zarr_dir}")
        if url in seen:
            violations.add(f"images[{i}].zarr_url", "appears twice in this request")
        seen.add(url)
        origin = None
        if image.HasField("origin"):
            origin = validation.url(image.origin, f"images[{i}].origin", violations)
        # Values are JSON scalars, not null: the request validator saw to it (scalar_values).
        attributes = attributes_to_python(image.attributes)
        types = dict(image.types)
        if clean.issuperset(attributes) and clean.issuperset(types):
            pass
        elif _clean_keys(attributes) and _clean_keys(types):
            clean.update(attributes, types)
        else:
            try:
                attributes = validate_keys(attributes, f"images[{i}].attributes")
                types = validate_keys(types, f"images[{i}].types")
            except ValueError as exc:
                violations.add(f"images[{i}]", str(exc))
        records.append(ImageRecord(url, origin, attributes, types))
    violations.raise_if_any()
    return records


def _checked_update(image: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    """The new attributes and types of an update (the rules of AddImages for them)."""
    violations = Violations()
    attributes = attributes_to_python(image.attributes)
    types = dict(image.types)
    try:
        attributes = validate_keys(attributes, "image.attributes")
        types = validate_keys(types, "image.types")
    except ValueError as exc:
        violations.add("image", str(exc))
    violations.raise_if_any()
    return attributes, types


def _image_not_found(zarr_url: str) -> NotFound:
    return NotFound(
        "Image not in the dataset", reason="IMAGE_NOT_FOUND", metadata={"zarr_url": zarr_url}
    )


class ImageServicer(rpc.ImageServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def AddImages(
        self, request: pb.AddImagesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        try:
            async with transaction(self.ctx.sessions) as session:
                dataset = await projects.dataset_checked(
                    session, request.project_id, request.dataset_id, user_id
                )
                # ~1.5 s of Python for 100,000 images: in a thread, so other calls go on.
                records = await asyncio.to_thread(checked_images, request.images, dataset.zarr_dir)
                added = await images.append(session, dataset, records)
        except images.DuplicateImages:
            # Rolled back; say which ones (a read of the committed state).
            async with self.ctx.reads() as session:
                present = await images.existing_urls(
                    session, request.dataset_id, [r.zarr_url for r in records]
                )
            known = set(present)
            raise AlreadyExists(
                f"{len(present)} image(s) already in the dataset"
                + (f", e.g. {present[0]}" if present else ""),
                reason="IMAGE_EXISTS",
                violations=[
                    (f"images[{i}].zarr_url", "already in the dataset")
                    for i, r in enumerate(records)
                    if r.zarr_url in known
                ][:100],
            ) from None
        self.ctx.statistics.rows_written(added)
        return pb.AddImagesResponse(added_count=added)

    async def QueryImages(
        self, request: pb.QueryImagesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        violations = Violations()
        size = page_size(request.page_size, maximum=MAX_PAGE)
        filters = validation.filters(request.filters, "filters", violations)
        zarr_url = request.zarr_url if request.HasField("zarr_url") else None
        violations.raise_if_any()
        async with self.ctx.reads() as session:
            dataset = await projects.dataset_checked(
                session, request.project_id, request.dataset_id, user_id
            )
        dataset_filters = dataset.filters if request.use_dataset_filters else None
        if dataset_filters and not (dataset_filters["attributes"] or dataset_filters["types"]):
            dataset_filters = None
        fingerprint = query_fingerprint(
            dataset.id, filters, dataset_filters, zarr_url, request.use_dataset_filters
        )
        state = decode_token(request.page_token, fingerprint, ("after", "total"))
        after = -1 if state is None else state["after"]
        plan = plan_filters(filters, dataset_filters)

        async def page_and_count() -> tuple[list[Any], int, int | None]:
            """The page's rows, the total, and the position the next page starts after (None:
            this is the last page)."""
            async with self.ctx.reads() as session:
                if zarr_url is not None:  # at most one image: read it by its key
                    where = images.query_clause(dataset.id, filters, dataset_filters, zarr_url)
                    rows = await images.page(session, where, after_position=after, limit=1)
                    return rows, len(rows), None
                # The matches as a bitmap: the total is its size, the page its next positions.
                # Whether there is a next page is the bitmap's to say (an image deleted between
                # the two reads leaves a shorter page, not a shorter list).
                matches = await images.matching(session, dataset.id, plan)
                positions = images.positions_after(matches, after, size + 1)
                rows = await images.rows_at(session, dataset.id, positions[:size])
                more = positions[size - 1] if len(positions) > size else None
                return rows, len(matches), more

        async def facets() -> tuple[dict[str, list[Any]], list[str]]:
            async with self.ctx.reads() as session:
                subset = None if dataset_filters is None else plan_filters(dataset_filters)
                return await images.facets(session, dataset.id, subset)

        response = pb.QueryImagesResponse()
        if state is None:
            # The first page: the page, the exact total and the facets, side by side.
            (rows, count, more), (facet_attrs, facet_types) = await asyncio.gather(
                page_and_count(), facets()
            )
            for key, values in facet_attrs.items():
                fill_values(response.attributes[key], values)
            response.types.extend(facet_types)
        else:
            rows, _, more = await page_and_count()
            count = state["total"]
        for row in rows:
            fill_image(response.images.add(), row._mapping)
        response.total_count = count
        if more is not None:
            response.next_page_token = encode_token(fingerprint, after=more, total=count)
        return response

    async def UpdateImage(
        self, request: pb.UpdateImageRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        paths = rules.mask_paths(request.update_mask.paths)
        new_attributes, new_types = _checked_update(request.image)
        zarr_url = request.image.zarr_url
        async with transaction(self.ctx.sessions) as session:
            await projects.dataset_checked(session, request.project_id, request.dataset_id, user_id)
            dataset = await images.lock_dataset(session, request.dataset_id)
            assert dataset is not None
            previous = await images.fetch(session, dataset.id, [zarr_url])
            old = previous.get(zarr_url)
            if old is None:
                raise _image_not_found(zarr_url)
            attributes, types = rules.replaced_image(
                old.attributes, old.types, paths, new_attributes, new_types
            )
            new = ImageRecord(zarr_url, old.origin, attributes, types)
            edit = FacetEdit()
            await images.replace_many(session, dataset, [new], previous, edit)
            await edit.apply(session, dataset.id)
        response = pb.UpdateImageResponse()
        fill_image(
            response.image,
            {"zarr_url": zarr_url, "origin": old.origin, "attributes": attributes, "types": types},
        )
        return response

    async def DeleteImages(
        self, request: pb.DeleteImagesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        urls = list(request.zarr_urls)
        async with transaction(self.ctx.sessions) as session:
            await projects.dataset_checked(session, request.project_id, request.dataset_id, user_id)
            dataset = await images.lock_dataset(session, request.dataset_id)
            assert dataset is not None
            present = await images.existing_urls(session, dataset.id, urls)
            chosen = rules.checked_deletions(urls, present)
            edit = FacetEdit()
            await images.remove_many(session, dataset, chosen, edit)
            await edit.apply(session, dataset.id)
        return pb.DeleteImagesResponse(deleted_count=len(chosen))
