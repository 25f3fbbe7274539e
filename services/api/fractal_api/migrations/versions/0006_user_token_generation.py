"""user token generation

Each user gains ``token_generation``: a counter stamped into every access token at login and
raised whenever the user's password changes, so tokens issued before the change stop working.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False),
        schema="api",
    )


def downgrade() -> None:
    op.drop_column("users", "token_generation", schema="api")
