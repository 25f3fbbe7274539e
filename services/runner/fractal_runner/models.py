"""The ``runner`` schema: one row per job the runner was asked to execute.

A run is ``queued`` when its submit command was accepted, ``running`` once an execution attempt
started, and ``finished`` once api has the job's final state (or the job needs nothing more).
Every run that is not finished is resumed when the runner starts.
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
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'finished')", name="status"),
        # Start-up scans the unfinished runs only.
        Index("ix_runs_unfinished", "job_id", postgresql_where=text("status <> 'finished'")),
    )
