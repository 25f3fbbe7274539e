"""task collections: one row per collection of a task package, with its lease

``task_collections`` records what was asked (package, requested version, extras, Python, pins,
wheel), where it is (state, the collector's lease, the attempts), and what came of it (the
installed version, the environment folder, the log, the frozen versions, the error, the
registered task ids). Lifecycle activities (deactivate, reactivate) are rows too, of another
``kind``, pointing at their collection (``target_id``); ``active`` says whether a collection's
environment exists and its tasks may run. At most one collection that has not failed per
(package, requested version, extras, Python): a partial unique index. ``collection_wheels``
keeps the wheels uploaded for collections.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now(name: str) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "task_collections",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("package_name", sa.Text(), nullable=False),
        sa.Column("requested_version", sa.Text(), server_default="", nullable=False),
        sa.Column("package_version", sa.Text(), nullable=True),
        sa.Column("package_extras", sa.Text(), server_default="", nullable=False),
        sa.Column("python_version", sa.Text(), nullable=False),
        sa.Column(
            "pins", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("wheel_path", sa.Text(), nullable=True),
        sa.Column("uploaded_wheel", sa.Text(), nullable=True),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("env_dir", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), server_default="", nullable=False),
        sa.Column("freeze", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "task_ids",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("kind", sa.Text(), server_default="collect", nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        _now("created_at"),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["api.users.id"],
            name=op.f("fk_task_collections_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["api.task_collections.id"],
            name=op.f("fk_task_collections_target_id_task_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_collections")),
        schema="api",
    )
    op.create_index(
        "uq_task_collections_active",
        "task_collections",
        ["package_name", "requested_version", "package_extras", "python_version"],
        unique=True,
        schema="api",
        postgresql_where=sa.text("state <> 'failed' AND kind = 'collect'"),
    )
    op.create_index(
        "ix_task_collections_target_id",
        "task_collections",
        ["target_id"],
        schema="api",
    )
    op.create_table(
        "collection_wheels",
        sa.Column("collection_id", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["api.task_collections.id"],
            name=op.f("fk_collection_wheels_collection_id_task_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", name=op.f("pk_collection_wheels")),
        schema="api",
    )


def downgrade() -> None:
    op.drop_table("collection_wheels", schema="api")
    op.drop_index("ix_task_collections_target_id", table_name="task_collections", schema="api")
    op.drop_index("uq_task_collections_active", table_name="task_collections", schema="api")
    op.drop_table("task_collections", schema="api")
