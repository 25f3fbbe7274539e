"""outbox rows keep the trace context of the transaction that wrote them

``outbox.trace_context`` (nullable text: the W3C ``traceparent``/``tracestate`` headers as a
JSON object) is filled when tracing is on; the relay sends it as NATS headers, so a trace goes
on from the RPC that wrote the row to the consumer of the message, also when the row is
published by another replica or after a restart.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("trace_context", sa.Text(), nullable=True), schema="api")


def downgrade() -> None:
    op.drop_column("outbox", "trace_context", schema="api")
