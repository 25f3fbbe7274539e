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

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
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


class SlurmJobState(StrEnum):
    #: recorded before its sbatch: the SLURM job may or may not exist (found by its tag)
    SUBMITTING = "submitting"
    #: sbatch answered with ``slurm_job_id``
    SUBMITTED = "submitted"
    #: SLURM reported its final state (``slurm_state``); its outputs can be read again
    ENDED = "ended"
    #: sbatch refused it, or it was never found after a crash: its calls go into a new job
    ABANDONED = "abandoned"


class SlurmJob(Base):
    """One SLURM job of a run (``fractal_runner.slurm.job_records``), recorded before its sbatch
    and updated with its id right after, so that a restarted runner finds it again."""

    __tablename__ = "slurm_jobs"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.job_id", ondelete="CASCADE"), nullable=False
    )
    # The task's folder in the job folder, and the SLURM file prefix of this job in it.
    subfolder: Mapped[str] = mapped_column(Text, nullable=False)
    slurm_prefix: Mapped[str] = mapped_column(Text, nullable=False)
    # The call ids (file stems of the task calls, e.g. "1_par_0000003") this job runs.
    calls: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    # The job's --comment: deployment, run, record and calls (unique per deployment).
    tag: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    # 0: the calls' first job; 1: their resubmission after SLURM lost the first one.
    generation: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    cluster: Mapped[str] = mapped_column(Text, nullable=False)
    slurm_user: Mapped[str] = mapped_column(Text, nullable=False)
    slurm_job_id: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default="submitting")
    slurm_state: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    __table_args__ = (
        CheckConstraint("state IN ('submitting', 'submitted', 'ended', 'abandoned')", name="state"),
        Index("ix_slurm_jobs_job_id", "job_id"),
    )
