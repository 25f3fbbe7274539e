"""The ``runner`` schema: one row per job the runner was asked to execute.

A run is ``queued`` when its submit command was accepted, ``running`` once an execution attempt
started, and ``finished`` once api has the job's final state (or the job needs nothing more).

Several runner replicas share the table. A replica executes a run only while it holds the run's
lease: ``owner`` is the replica's instance id (``hostname-pid-random``, one per process) and
``lease_expires_at`` the end of the lease, which the owner renews while the run is in its hands.
A run whose lease expired (its owner died), or that has no owner (a graceful shutdown released
it), is claimed and resumed by any replica. A finished run keeps its owner and has no lease.
``owner_process`` (``boot_id/pid-namespace/pid/start-time`` of the owner's process) lets a
replica on the same host see at once that the owner process is gone (a crash, then a restart)
without waiting for the lease to expire. See ``fractal_runner.leases``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, Integer, Text, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fractal_grpc.db import schema_metadata

SCHEMA = "runner"


class Base(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Run(Base):
    __tablename__ = "runs"
    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="queued")
    # Execution attempts started (a resume after a restart is one more attempt).
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(Text)
    owner_process: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'finished')", name="status"),
        # Start-up and the orphan sweep scan the unfinished runs only.
        Index("ix_runs_unfinished", "job_id", postgresql_where=text("status <> 'finished'")),
    )
