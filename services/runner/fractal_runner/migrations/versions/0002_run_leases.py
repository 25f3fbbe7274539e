"""run leases: owner, owner_process, lease_expires_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("owner", sa.Text(), nullable=True), schema="runner")
    op.add_column("runs", sa.Column("owner_process", sa.Text(), nullable=True), schema="runner")
    op.add_column(
        "runs",
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        schema="runner",
    )


def downgrade() -> None:
    op.drop_column("runs", "lease_expires_at", schema="runner")
    op.drop_column("runs", "owner_process", schema="runner")
    op.drop_column("runs", "owner", schema="runner")
