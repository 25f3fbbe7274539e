"""indexes in the keyset order of the job and workflow lists

``ListJobs`` reads a project's jobs newest first (``id`` descending) from ``before``, and a
workflow's the same way; ``ListWorkflows`` reads a project's workflows by ``id`` from ``after``.
Without an index over (scope, id) each page was a scan of the primary key filtered by project
or workflow, whose length grows with the rows of every other project. With these a page reads
its rows and no others.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_jobs_project_id_id", "jobs", ["project_id", "id"]),
    ("ix_jobs_workflow_id_id", "jobs", ["workflow_id", "id"]),
    ("ix_workflows_project_id_id", "workflows", ["project_id", "id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False, schema="api")


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table, schema="api")
