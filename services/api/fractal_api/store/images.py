"""The image table: bulk set operations, keyset pages, facets (DESIGN §5).

Bulk writes pass whole columns as arrays (``unnest``), never one statement per image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    any_,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Dataset, Image, ImageFacet
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

_FACETS_DELTA = text(
    """
    INSERT INTO api.image_facets (dataset_id, kind, key, value, count)
    SELECT :dataset_id, d.kind, d.key, d.value::jsonb, d.delta
    FROM unnest(CAST(:kinds AS text[]), CAST(:keys AS text[]), CAST(:values AS text[]),
                CAST(:deltas AS bigint[])) AS d(kind, key, value, delta)
    ON CONFLICT (dataset_id, kind, key, value)
    DO UPDATE SET count = api.image_facets.count + excluded.count
    """
)

_UPDATE_MANY = text(
    """
    UPDATE api.images AS i SET attributes = u.attributes::jsonb, types = u.types::jsonb
    FROM unnest(CAST(:urls AS text[]), CAST(:attributes AS text[]), CAST(:types AS text[]))
         AS u(zarr_url, attributes, types)
    WHERE i.dataset_id = :dataset_id AND i.zarr_url = u.zarr_url
    """
)


def _text_array(values: Iterable[str]) -> Any:
    """One array parameter (``= ANY(:urls)``) instead of one bind parameter per url: batches
    of 100,000 urls stay one statement (PostgreSQL allows at most 32,767 parameters)."""
    return cast(literal(list(values), ARRAY(Text)), ARRAY(Text))


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
            Image.dataset_id == dataset_id, Image.zarr_url == any_(_text_array(urls))
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
            Image.dataset_id == dataset_id, Image.zarr_url == any_(_text_array(set(urls)))
        )
    )
    return {
        row.zarr_url: ImageRecord(row.zarr_url, row.origin, row.attributes, row.types)
        for row in result
    }


class DuplicateImages(Exception):
    """Some images of an append are already in the dataset (the transaction must roll back)."""


async def append(session: AsyncSession, dataset: Dataset, images: Sequence[ImageRecord]) -> int:
    """Append images at the end of the list and count them into the facets. Raises
    DuplicateImages when a zarr_url is already there (the unique constraint decides)."""
    if not images:
        return 0
    start = await session.scalar(_RESERVE, {"dataset_id": dataset.id, "n": len(images)})
    attributes = [_dumps(i.attributes) for i in images]
    types = [_dumps(i.types) for i in images]
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
    await apply_facet_delta(session, dataset, added=images)
    return len(images)


def _facet_keys(image: ImageRecord) -> list[tuple[str, str, str]]:
    keys = [("a", key, _dumps(value)) for key, value in image.attributes.items()]
    keys += [("t", key, _dumps(bool(value))) for key, value in image.types.items()]
    return keys


async def apply_facet_delta(
    session: AsyncSession,
    dataset: Dataset,
    removed: Iterable[ImageRecord] = (),
    added: Iterable[ImageRecord] = (),
) -> None:
    """Keep the facet summary exact: count ``removed`` images out and ``added`` ones in."""
    delta: Counter[tuple[str, str, str]] = Counter()
    for image in removed:
        delta.subtract(_facet_keys(image))
    for image in added:
        delta.update(_facet_keys(image))
    changes = [(k, n) for k, n in delta.items() if n]
    await apply_facet_counts(session, dataset, changes)


async def apply_facet_counts(
    session: AsyncSession, dataset: Dataset, changes: Sequence[tuple[tuple[str, str, str], int]]
) -> None:
    if not changes:
        return
    await session.execute(
        _FACETS_DELTA,
        {
            "dataset_id": dataset.id,
            "kinds": [k[0] for k, _ in changes],
            "keys": [k[1] for k, _ in changes],
            "values": [k[2] for k, _ in changes],
            "deltas": [n for _, n in changes],
        },
    )
    if any(n < 0 for _, n in changes):
        await session.execute(
            delete(ImageFacet).where(ImageFacet.dataset_id == dataset.id, ImageFacet.count <= 0)
        )


async def replace_many(
    session: AsyncSession, dataset: Dataset, images: Sequence[ImageRecord]
) -> None:
    """Write the new state of existing images (the caller updates the facets)."""
    if not images:
        return
    await session.execute(
        _UPDATE_MANY,
        {
            "dataset_id": dataset.id,
            "urls": [i.zarr_url for i in images],
            "attributes": [_dumps(i.attributes) for i in images],
            "types": [_dumps(i.types) for i in images],
        },
    )


async def remove_many(session: AsyncSession, dataset: Dataset, urls: Sequence[str]) -> None:
    """Delete images (the caller updates the facets)."""
    if not urls:
        return
    result = await session.execute(
        delete(Image).where(
            Image.dataset_id == dataset.id, Image.zarr_url == any_(_text_array(urls))
        )
    )
    await session.execute(
        _UNCOUNT,
        {"dataset_id": dataset.id, "n": result.rowcount},  # type: ignore[attr-defined]
    )


async def add_types_where(
    session: AsyncSession, dataset: Dataset, where: ColumnElement[bool], types: Mapping[str, bool]
) -> int:
    """Set ``types`` on every image matching ``where`` (the implicit update, as set operations),
    counting the type keys that images gain into the facets."""
    if types:
        # Per key: images that lack it, and images that have it with the other value.
        columns = []
        for key, value in types.items():
            columns.append(func.count().filter(~Image.types.has_key(key)))
            columns.append(
                func.count().filter(
                    Image.types.has_key(key),
                    Image.types[key] != cast(literal(_dumps(value)), JSONB),
                )
            )
        counts = (
            await session.execute(select(*columns).where(Image.dataset_id == dataset.id, where))
        ).one()
        changes: list[tuple[tuple[str, str, str], int]] = []
        for i, (key, value) in enumerate(types.items()):
            missing, flipped = int(counts[2 * i]), int(counts[2 * i + 1])
            changes.append((("t", key, _dumps(bool(value))), missing + flipped))
            changes.append((("t", key, _dumps(not value)), -flipped))
        await apply_facet_counts(session, dataset, [c for c in changes if c[1]])
    result = await session.execute(
        update(Image)
        .where(Image.dataset_id == dataset.id, where)
        .values(types=Image.types.op("||")(cast(literal(_dumps(dict(types))), JSONB)))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


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


# Below this many images, a count reads the dataset's rows through its own index and filters
# them, instead of letting the planner intersect table-wide GIN matches (which, with a large
# dataset in the same table, visits that dataset's matches too).
SMALL_DATASET = 50_000


async def count(
    session: AsyncSession,
    dataset: Dataset,
    filters: Mapping[str, Any] | None,
    dataset_filters: Mapping[str, Any] | None = None,
    zarr_url: str | None = None,
) -> int:
    if dataset.image_count <= SMALL_DATASET:
        # OFFSET 0 keeps the filters out of the subquery: the dataset is read by its index.
        rows = (
            select(Image.attributes, Image.types, Image.zarr_url)
            .where(Image.dataset_id == dataset.id)
            .offset(0)
            .subquery()
        )
        stmt = (
            select(func.count())
            .select_from(rows)
            .where(*_matching(rows.c, filters, dataset_filters, zarr_url))
        )
    else:
        where = query_clause(dataset.id, filters, dataset_filters, zarr_url)
        stmt = select(func.count()).select_from(Image).where(where)
    return int(await session.scalar(stmt) or 0)


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


async def facets(session: AsyncSession, dataset_id: int) -> tuple[dict[str, list[Any]], list[str]]:
    rows = await session.execute(
        select(ImageFacet.kind, ImageFacet.key, ImageFacet.value)
        .where(ImageFacet.dataset_id == dataset_id, ImageFacet.count > 0)
        .order_by(ImageFacet.kind, ImageFacet.key)
    )
    attributes: dict[str, list[Any]] = {}
    types: dict[str, None] = {}
    for kind, key, value in rows:
        if kind == "a":
            attributes.setdefault(key, []).append(value)
        else:
            types[key] = None
    return attributes, list(types)


async def summary_count(
    session: AsyncSession, dataset: Dataset, filters: Mapping[str, Any]
) -> int | None:
    """The number of images matching ``filters``, read from the facet summary when one facet
    decides it (no filter, one attribute, or one type); None when a scan is needed."""
    attributes = {k: v for k, v in (filters.get("attributes") or {}).items() if v is not None}
    types = filters.get("types") or {}
    if not attributes and not types:
        return dataset.image_count
    if len(attributes) + len(types) != 1:
        return None
    if attributes:
        ((key, value),) = attributes.items()
        kind, wanted = "a", value
    else:
        ((key, value),) = types.items()
        kind, wanted = "t", True
    found = await session.scalar(
        select(ImageFacet.count).where(
            ImageFacet.dataset_id == dataset.id,
            ImageFacet.kind == kind,
            ImageFacet.key == key,
            ImageFacet.value == cast(literal(_dumps(wanted)), JSONB),
        )
    )
    count = int(found or 0)
    # A false type filter matches every image without the type set to true.
    return count if kind == "a" or value else dataset.image_count - count


async def facets_of(
    session: AsyncSession, where: ColumnElement[bool]
) -> tuple[dict[str, list[Any]], list[str]]:
    """Facets of an arbitrary subset, computed by scanning it."""
    sub = select(Image.attributes, Image.types).where(where).subquery()
    attr_rows = await session.execute(
        select(text("e.key"), text("e.value"))
        .select_from(sub)
        .join(
            func.jsonb_each(sub.c.attributes).table_valued("key", "value").alias("e"), text("true")
        )
        .distinct()
        .order_by(text("e.key"))
    )
    attributes: dict[str, list[Any]] = {}
    for key, value in attr_rows:
        attributes.setdefault(key, []).append(value)
    type_rows = await session.execute(
        select(func.jsonb_object_keys(sub.c.types).label("k")).select_from(sub).distinct()
    )
    return attributes, sorted(r.k for r in type_rows)
