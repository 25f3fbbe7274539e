"""slurm_jobs: every SLURM job of a run, recorded before its sbatch (restart reconciliation)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slurm_jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("subfolder", sa.Text(), nullable=False),
        sa.Column("slurm_prefix", sa.Text(), nullable=False),
        sa.Column("calls", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        sa.Column("generation", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("slurm_user", sa.Text(), nullable=False),
        sa.Column("slurm_job_id", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), server_default="submitting", nullable=False),
        sa.Column("slurm_state", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('submitting', 'submitted', 'ended', 'abandoned')",
            name=op.f("ck_slurm_jobs_state"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["runner.runs.job_id"],
            name=op.f("fk_slurm_jobs_job_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slurm_jobs")),
        sa.UniqueConstraint("tag", name=op.f("uq_slurm_jobs_tag")),
        schema="runner",
    )
    op.create_index("ix_slurm_jobs_job_id", "slurm_jobs", ["job_id"], schema="runner")


def downgrade() -> None:
    op.drop_index("ix_slurm_jobs_job_id", table_name="slurm_jobs", schema="runner")
    op.drop_table("slurm_jobs", schema="runner")
