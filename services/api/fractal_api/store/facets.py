"""The facet table: per dataset, every attribute value and type value with the positions of the
images that have it (a roaring bitmap, see :mod:`fractal_grpc.images.bitmaps`), and its count.

Writers of a dataset's images hold the dataset row lock, so a read-modify-write of its bitmaps
in the same transaction is safe; readers see bitmaps and images from the same commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyroaring import BitMap64
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_grpc.images.bitmaps import ALL, FacetKey, image_facet_keys, note_shown_numbers
from fractal_grpc.images.changes import ImageRecord

_LOAD = text(
    """
    SELECT u.idx, f.members
    FROM unnest(CAST(:kinds AS text[]), CAST(:keys AS text[]), CAST(:values AS text[]))
         WITH ORDINALITY AS u(kind, key, value, idx)
    JOIN api.image_facets AS f
      ON f.dataset_id = :dataset_id AND f.kind = u.kind AND f.key = u.key
         AND f.value = u.value::jsonb
    """
)

_UPSERT = text(
    """
    INSERT INTO api.image_facets (dataset_id, kind, key, value, count, members)
    SELECT :dataset_id, u.kind, u.key, u.value::jsonb, u.count, u.members
    FROM unnest(CAST(:kinds AS text[]), CAST(:keys AS text[]), CAST(:values AS text[]),
                CAST(:counts AS bigint[]), CAST(:members AS bytea[]))
         AS u(kind, key, value, count, members)
    ON CONFLICT (dataset_id, kind, key, value)
    DO UPDATE SET count = excluded.count, members = excluded.members
    """
)

_DELETE = text(
    """
    DELETE FROM api.image_facets AS f
    USING unnest(CAST(:kinds AS text[]), CAST(:keys AS text[]), CAST(:values AS text[]))
          AS u(kind, key, value)
    WHERE f.dataset_id = :dataset_id AND f.kind = u.kind AND f.key = u.key
          AND f.value = u.value::jsonb
    """
)


async def load(
    session: AsyncSession, dataset_id: int, keys: Sequence[FacetKey]
) -> dict[FacetKey, BitMap64]:
    """The bitmaps of ``keys`` that exist (a facet no image has is absent)."""
    if not keys:
        return {}
    rows = await session.execute(
        _LOAD,
        {
            "dataset_id": dataset_id,
            "kinds": [k[0] for k in keys],
            "keys": [k[1] for k in keys],
            "values": [k[2] for k in keys],
        },
    )
    return {keys[idx - 1]: BitMap64.deserialize(members) for idx, members in rows}


class FacetEdit:
    """Positions entering and leaving facets during one write, applied at its end.

    Removals are applied before additions. That is right for every write the api makes: an
    image is added once (new position), removed once, or changed (it leaves the facets it loses
    and enters the ones it gains); one write never both changes and removes an image.
    """

    def __init__(self) -> None:
        self._added: dict[FacetKey, list[int]] = {}
        self._removed: dict[FacetKey, list[int]] = {}
        # How a new numeric facet's value is stored: as the first image that has it gives it
        # (1.0 and 1 share the facet keyed "1"; it lists whichever came first).
        self._shown: dict[FacetKey, str] = {}

    def _add(self, key: FacetKey, position: int) -> None:
        self._added.setdefault(key, []).append(position)

    def _remove(self, key: FacetKey, position: int) -> None:
        self._removed.setdefault(key, []).append(position)

    def added_range(self, start: int, images: Sequence[ImageRecord]) -> None:
        """``images`` appended at positions ``start``, ``start + 1``, …"""
        self._added.setdefault(ALL, []).extend(range(start, start + len(images)))
        add = self._add
        for position, image in enumerate(images, start):
            for key in image_facet_keys(image.attributes, image.types):
                add(key, position)
            note_shown_numbers(self._shown, image.attributes)

    def removed(
        self, position: int, attributes: Mapping[str, Any], types: Mapping[str, Any]
    ) -> None:
        self._remove(ALL, position)
        for key in image_facet_keys(attributes, types):
            self._remove(key, position)

    def changed(self, position: int, old: ImageRecord, new: ImageRecord) -> None:
        before = set(image_facet_keys(old.attributes, old.types))
        after = set(image_facet_keys(new.attributes, new.types))
        for key in before - after:
            self._remove(key, position)
        for key in after - before:
            self._add(key, position)
        note_shown_numbers(self._shown, new.attributes)

    def types_set(self, positions: Iterable[int], types: Mapping[str, bool]) -> None:
        """Every image at ``positions`` now has ``types`` (the implicit update)."""
        chosen = list(positions)
        for key, value in types.items():
            self._added.setdefault(("t", key, "true" if value else "false"), []).extend(chosen)
            self._removed.setdefault(("t", key, "false" if value else "true"), []).extend(chosen)

    async def apply(self, session: AsyncSession, dataset_id: int) -> None:
        """Write the changed bitmaps and counts; drop facets no image has any more."""
        keys = list(dict.fromkeys([*self._removed, *self._added]))
        if not keys:
            return
        current = await load(session, dataset_id, keys)
        kept: list[tuple[FacetKey, int, bytes]] = []
        gone: list[FacetKey] = []
        for key in keys:
            bitmap = current.get(key)
            if bitmap is None:
                bitmap = BitMap64()
            if removed := self._removed.get(key):
                bitmap.difference_update(BitMap64(removed))
            if added := self._added.get(key):
                bitmap.update(added)
            if bitmap:
                bitmap.run_optimize()
                kept.append((key, len(bitmap), bitmap.serialize()))
            elif key in current:
                gone.append(key)
        if kept:
            await session.execute(
                _UPSERT,
                {
                    "dataset_id": dataset_id,
                    "kinds": [k[0][0] for k in kept],
                    "keys": [k[0][1] for k in kept],
                    "values": [self._shown.get(k[0], k[0][2]) for k in kept],
                    "counts": [k[1] for k in kept],
                    "members": [k[2] for k in kept],
                },
            )
        if gone:
            await session.execute(
                _DELETE,
                {
                    "dataset_id": dataset_id,
                    "kinds": [k[0] for k in gone],
                    "keys": [k[1] for k in gone],
                    "values": [k[2] for k in gone],
                },
            )
        self._added.clear()
        self._removed.clear()
        self._shown.clear()
