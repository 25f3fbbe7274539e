"""The image table: bulk set operations, pages, facets (DESIGN §5).

Bulk writes pass whole columns as arrays (``unnest``), never one statement per image, and keep
the facet bitmaps (:mod:`fractal_api.store.facets`) in step. Reads select by bitmap: the
matches of a filter are a set of positions, its size is the total, and a page is the next
positions after the token's, read from the ``(dataset_id, position)`` index.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import asyncpg
import orjson
from pyroaring import BitMap64
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    and_,
    any_,
    cast,
    delete,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Dataset, Image, ImageFacet
from fractal_api.store import facets as facets_store
from fractal_api.store.facets import FacetEdit
from fractal_grpc.images.bitmaps import FilterPlan
from fractal_grpc.images.changes import ImageRecord
from fractal_grpc.images.sql_filters import image_filter_clause

_INSERT = text(
    """
    INSERT INTO api.images (dataset_id, position, zarr_url, origin, attributes, types)
    SELECT :dataset_id, :start + u.ord - 1, u.zarr_url, u.origin, u.attributes::jsonb,
           u.types::jsonb
    FROM unnest(CAST(:urls AS text[]), CAST(:origins AS text[]), CAST(:attributes AS text[]),
                CAST(:types AS text[])) WITH ORDINALITY
         AS u(zarr_url, origin, attributes, types, ord)
    ON CONFLICT (dataset_id, zarr_url) DO NOTHING
    """
)

# Reserve positions at the end of the list and count the images in, in one statement (which
# also locks the dataset row: writers of one image list take turns).
_RESERVE = text(
    """
    UPDATE api.datasets SET next_position = next_position + :n, image_count = image_count + :n
    WHERE id = :dataset_id
    RETURNING next_position - :n
    """
)

_UNCOUNT = text("UPDATE api.datasets SET image_count = image_count - :n WHERE id = :dataset_id")

_UPDATE_MANY = text(
    """
    UPDATE api.images AS i SET attributes = u.attributes::jsonb, types = u.types::jsonb
    FROM unnest(CAST(:urls AS text[]), CAST(:attributes AS text[]), CAST(:types AS text[]))
         AS u(zarr_url, attributes, types)
    WHERE i.dataset_id = :dataset_id AND i.zarr_url = u.zarr_url
    RETURNING i.position, i.zarr_url
    """
)


def _array(values: Iterable[Any], item_type: type[Text] | type[BigInteger] = Text) -> Any:
    """One array parameter (``= ANY(:urls)``) instead of one bind parameter per value: batches
    of 100,000 urls stay one statement (PostgreSQL allows at most 32,767 parameters)."""
    return cast(literal(list(values), ARRAY(item_type)), ARRAY(item_type))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def lock_dataset(session: AsyncSession, dataset_id: int) -> Dataset | None:
    """The dataset row, locked for this transaction (serialises writers of one image list)."""
    result = await session.execute(
        select(Dataset)
        .where(Dataset.id == dataset_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def existing_urls(session: AsyncSession, dataset_id: int, urls: Sequence[str]) -> list[str]:
    result = await session.execute(
        select(Image.zarr_url).where(
            Image.dataset_id == dataset_id, Image.zarr_url == any_(_array(urls))
        )
    )
    return list(result.scalars())


async def fetch(
    session: AsyncSession, dataset_id: int, urls: Sequence[str]
) -> dict[str, ImageRecord]:
    if not urls:
        return {}
    result = await session.execute(
        select(Image.zarr_url, Image.origin, Image.attributes, Image.types).where(
            Image.dataset_id == dataset_id, Image.zarr_url == any_(_array(set(urls)))
        )
    )
    return {
        row.zarr_url: ImageRecord(row.zarr_url, row.origin, row.attributes, row.types)
        for row in result
    }


class DuplicateImages(Exception):
    """Some images of an append are already in the dataset (the transaction must roll back)."""


def _encoded(images: Sequence[ImageRecord]) -> tuple[list[str], list[str]]:
    return [_dumps(i.attributes) for i in images], [_dumps(i.types) for i in images]


async def append(
    session: AsyncSession,
    dataset: Dataset,
    images: Sequence[ImageRecord],
    edit: FacetEdit | None = None,
) -> int:
    """Append images at the end of the list and enter them in the facets (into ``edit`` when
    given, for the caller to apply; else at once). Raises DuplicateImages when a zarr_url is
    already there (the unique constraint decides)."""
    if not images:
        return 0
    start = await session.scalar(_RESERVE, {"dataset_id": dataset.id, "n": len(images)})
    # Python work that grows with the batch (0.1 s per 100,000 images): off the loop.
    attributes, types = await asyncio.to_thread(_encoded, images)
    result = await session.execute(
        _INSERT,
        {
            "dataset_id": dataset.id,
            "start": start,
            "urls": [i.zarr_url for i in images],
            "origins": [i.origin for i in images],
            "attributes": attributes,
            "types": types,
        },
    )
    if result.rowcount != len(images):  # type: ignore[attr-defined]
        raise DuplicateImages()
    target = FacetEdit() if edit is None else edit
    await asyncio.to_thread(target.added_range, int(start or 0), images)
    if edit is None:
        await target.apply(session, dataset.id)
    return len(images)


async def replace_many(
    session: AsyncSession,
    dataset: Dataset,
    images: Sequence[ImageRecord],
    previous: Mapping[str, ImageRecord],
    edit: FacetEdit,
) -> None:
    """Write the new state of existing images (``previous``: their state before)."""
    if not images:
        return
    result = await session.execute(
        _UPDATE_MANY,
        {
            "dataset_id": dataset.id,
            "urls": [i.zarr_url for i in images],
            "attributes": [_dumps(i.attributes) for i in images],
            "types": [_dumps(i.types) for i in images],
        },
    )
    new = {i.zarr_url: i for i in images}
    for position, zarr_url in result:
        edit.changed(position, previous[zarr_url], new[zarr_url])


async def remove_many(
    session: AsyncSession, dataset: Dataset, urls: Sequence[str], edit: FacetEdit
) -> None:
    """Delete images, taking them out of the facets."""
    if not urls:
        return
    result = await session.execute(
        delete(Image)
        .where(Image.dataset_id == dataset.id, Image.zarr_url == any_(_array(urls)))
        .returning(Image.position, Image.attributes, Image.types)
    )
    removed = 0
    for position, attributes, types in result:
        edit.removed(position, attributes, types)
        removed += 1
    await session.execute(_UNCOUNT, {"dataset_id": dataset.id, "n": removed})


async def add_types_at(
    session: AsyncSession,
    dataset: Dataset,
    positions: BitMap64,
    types: Mapping[str, bool],
    edit: FacetEdit,
) -> int:
    """Set ``types`` on the images at ``positions`` (the implicit update, as one statement)."""
    chosen = list(positions)
    if not chosen:
        return 0
    await session.execute(
        update(Image)
        .where(Image.dataset_id == dataset.id, Image.position == any_(_array(chosen, BigInteger)))
        .values(types=Image.types.op("||")(cast(literal(_dumps(dict(types))), JSONB)))
    )
    edit.types_set(chosen, types)
    return len(chosen)


def filter_clause(
    filters: Mapping[str, Any] | None, columns: Any = Image.__table__.c
) -> ColumnElement[bool]:
    filters = filters or {}
    return image_filter_clause(
        columns.attributes,
        columns.types,
        filters.get("attributes") or {},
        filters.get("types") or {},
    )


def _matching(
    columns: Any,
    filters: Mapping[str, Any] | None,
    dataset_filters: Mapping[str, Any] | None,
    zarr_url: str | None,
) -> list[ColumnElement[bool]]:
    parts = [filter_clause(filters, columns)]
    if dataset_filters is not None:
        parts.append(filter_clause(dataset_filters, columns))
    if zarr_url is not None:
        parts.append(columns.zarr_url == zarr_url)
    return parts


def query_clause(
    dataset_id: int,
    filters: Mapping[str, Any] | None,
    dataset_filters: Mapping[str, Any] | None = None,
    zarr_url: str | None = None,
) -> ColumnElement[bool]:
    columns = Image.__table__.c
    return and_(
        columns.dataset_id == dataset_id, *_matching(columns, filters, dataset_filters, zarr_url)
    )


async def page(
    session: AsyncSession, where: ColumnElement[bool], *, after_position: int, limit: int
) -> list[Any]:
    result = await session.execute(
        select(Image.position, Image.zarr_url, Image.origin, Image.attributes, Image.types)
        .where(where, Image.position > after_position)
        .order_by(Image.position)
        .limit(limit)
    )
    return list(result)


async def matching(session: AsyncSession, dataset_id: int, plan: FilterPlan) -> BitMap64:
    """The positions of the dataset's images that match ``plan`` (from the facet bitmaps)."""
    return plan.combine(await facets_store.load(session, dataset_id, plan.needed))


def positions_after(matches: BitMap64, after: int, n: int) -> list[int]:
    """The first ``n`` positions of ``matches`` greater than ``after``."""
    return list(islice(matches.iter_equal_or_larger(after + 1), n))


async def rows_at(session: AsyncSession, dataset_id: int, positions: Sequence[int]) -> list[Any]:
    """The images at ``positions``, in list order."""
    if not positions:
        return []
    result = await session.execute(
        select(Image.position, Image.zarr_url, Image.origin, Image.attributes, Image.types)
        .where(
            Image.dataset_id == dataset_id,
            Image.position == any_(_array(positions, BigInteger)),
        )
        .order_by(Image.position)
    )
    return list(result)


async def facets(
    session: AsyncSession, dataset_id: int, subset: FilterPlan | None = None
) -> tuple[dict[str, list[Any]], list[str]]:
    """The attribute values and type keys of the dataset's images, or of the images matching
    ``subset`` only (a facet counts when its bitmap meets the subset's)."""
    columns = [ImageFacet.kind, ImageFacet.key, ImageFacet.value]
    if subset is not None:
        columns.append(ImageFacet.members)
    rows = await session.execute(
        select(*columns)
        .where(ImageFacet.dataset_id == dataset_id, ImageFacet.kind.in_(("a", "t")))
        .order_by(ImageFacet.kind, ImageFacet.key)
    )
    chosen = None if subset is None else await matching(session, dataset_id, subset)
    attributes: dict[str, list[Any]] = {}
    types: dict[str, None] = {}
    for row in rows:
        if chosen is not None and not chosen.intersect(BitMap64.deserialize(row.members)):
            continue
        if row.kind == "a":
            attributes.setdefault(row.key, []).append(row.value)
        else:
            types[row.key] = None
    return attributes, list(types)


async def rows_in_batches(
    session: AsyncSession, dataset_id: int, batch: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """Every image of the dataset in list order, ``batch`` rows at a time, as records of
    (zarr_url, origin, attributes JSON text, types JSON text), read in the session's
    transaction (its snapshot) through a server-side cursor: the list is never all in memory.
    Straight from asyncpg, JSON left as text, for :class:`fractal_grpc.images.wire.ImageEncoder`.

    The next batch is asked for before this one is handed over, so PostgreSQL reads it while
    the caller encodes and sends this one (one request in flight: the connection's limit)."""
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    cursor = await raw.cursor(
        "SELECT zarr_url, origin, attributes::text, types::text FROM api.images"
        " WHERE dataset_id = $1 ORDER BY position",
        dataset_id,
    )
    pending = asyncio.ensure_future(cursor.fetch(batch))
    try:
        while records := await pending:
            pending = asyncio.ensure_future(cursor.fetch(batch))
            await asyncio.sleep(0)  # the next fetch goes out before the caller's work
            yield records
    finally:
        if not pending.done():
            # The caller stopped early: the fetch in flight ends first (at most one batch),
            # so the connection goes back to the pool with no request pending on it.
            with contextlib.suppress(Exception):
                await pending
