"""drop the GIN indexes of the image table

Filters are answered from the facet bitmaps (0002): no query reads ``images.attributes`` or
``images.types`` through these indexes any more, and every image write paid for them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 05:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_images_types", table_name="images", schema="api")
    op.drop_index("ix_images_attributes", table_name="images", schema="api")


def downgrade() -> None:
    for column in ("attributes", "types"):
        op.create_index(
            f"ix_images_{column}",
            "images",
            [column],
            unique=False,
            schema="api",
            postgresql_using="gin",
            postgresql_ops={column: "jsonb_path_ops"},
        )
