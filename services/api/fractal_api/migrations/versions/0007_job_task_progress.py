"""per-task progress of jobs: task states as an enum's values, call counts, started jobs

- ``jobs.started_at``: when a runner first reported the job running (NULL while queued).
- ``jobs.task_statuses`` entries become ``{workflow_task_id, order, task_name, state,
  calls_done, calls_failed, calls_total}`` (``fractal_grpc.jobs.progress``), one per task of the
  slice. Existing jobs are rewritten from their snapshot: a task with status "done" or "failed"
  keeps it as its state, every other task of the slice (also the ones a failed job had dropped)
  is "pending"; the counts of old jobs are unknown and set to 0.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement for every job: the snapshot gives the slice, the old entries the states.
_REWRITE = """
    UPDATE api.jobs AS j SET task_statuses = COALESCE((
        SELECT jsonb_agg(
            jsonb_build_object(
                'workflow_task_id', snap.item -> 'workflow_task_id',
                'order', snap.item -> 'order',
                'task_name', COALESCE(snap.item ->> 'task_name', ''),
                'state', CASE
                    WHEN old.item ->> 'status' IN ('done', 'failed') THEN old.item ->> 'status'
                    ELSE 'pending' END,
                'calls_done', 0, 'calls_failed', 0, 'calls_total', 0
            ) ORDER BY snap.n
        )
        FROM jsonb_array_elements(j.tasks_snapshot) WITH ORDINALITY AS snap(item, n)
        LEFT JOIN LATERAL (
            SELECT e AS item FROM jsonb_array_elements(j.task_statuses) AS e
            WHERE e -> 'order' = snap.item -> 'order' LIMIT 1
        ) AS old ON true
    ), '[]'::jsonb)
"""

_BACK = """
    UPDATE api.jobs AS j SET task_statuses = COALESCE((
        SELECT jsonb_agg(
            jsonb_build_object(
                'workflow_task_id', e -> 'workflow_task_id',
                'order', e -> 'order',
                'status', CASE WHEN e ->> 'state' IN ('done', 'failed') THEN e ->> 'state'
                    ELSE 'submitted' END
            ) ORDER BY n
        )
        FROM jsonb_array_elements(j.task_statuses) WITH ORDINALITY AS t(e, n)
    ), '[]'::jsonb)
"""


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True), schema="api"
    )
    op.execute(_REWRITE)


def downgrade() -> None:
    op.execute(_BACK)
    op.drop_column("jobs", "started_at", schema="api")
