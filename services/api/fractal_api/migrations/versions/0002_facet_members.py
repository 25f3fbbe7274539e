"""facet membership bitmaps

Each facet row gains ``members``: the positions of the images that have it (a serialized
64-bit roaring bitmap), and each dataset a row of kind '*' holding all its images. Existing
datasets are rebuilt from their images.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 04:40:00
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from fractal_grpc.images.bitmaps import ALL, FacetKey, build_members, note_shown_numbers

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 50_000


def _rebuild(connection: sa.Connection, dataset_id: int) -> None:
    def rows() -> Iterator[Any]:
        after = -1
        while True:
            batch = connection.execute(
                sa.text(
                    "SELECT position, attributes, types FROM api.images"
                    " WHERE dataset_id = :d AND position > :after ORDER BY position LIMIT :n"
                ),
                {"d": dataset_id, "after": after, "n": _BATCH},
            ).all()
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1][0]

    shown: dict[FacetKey, str] = {}  # numbers are listed as first given

    def noted() -> Iterator[Any]:
        for position, attributes, types in rows():
            note_shown_numbers(shown, attributes)
            yield position, attributes, types

    members = build_members(noted())
    connection.execute(
        sa.text("DELETE FROM api.image_facets WHERE dataset_id = :d"), {"d": dataset_id}
    )
    if not members[ALL]:
        return
    connection.execute(
        sa.text(
            "INSERT INTO api.image_facets (dataset_id, kind, key, value, count, members)"
            " VALUES (:d, :kind, :key, CAST(:value AS jsonb), :count, :members)"
        ),
        [
            {
                "d": dataset_id,
                "kind": kind,
                "key": key,
                "value": shown.get((kind, key, value), value),
                "count": len(bitmap),
                "members": bitmap.serialize(),
            }
            for (kind, key, value), bitmap in members.items()
        ],
    )


def upgrade() -> None:
    op.add_column(
        "image_facets", sa.Column("members", sa.LargeBinary(), nullable=True), schema="api"
    )
    connection = op.get_bind()
    for dataset_id in connection.execute(sa.text("SELECT id FROM api.datasets")).scalars():
        _rebuild(connection, dataset_id)
    op.alter_column("image_facets", "members", nullable=False, schema="api")
    # Bitmaps are compact already: store them out of line without compressing them again.
    op.execute("ALTER TABLE api.image_facets ALTER COLUMN members SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("DELETE FROM api.image_facets WHERE kind = '*'")
    op.drop_column("image_facets", "members", schema="api")
