"""The ``api`` schema: users, projects, datasets, images, tasks, workflows, jobs, the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fractal_grpc.db import schema_metadata
from fractal_grpc.events.outbox import outbox_table

SCHEMA = "api"


class Base(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)

    def __getitem__(self, column: str) -> Any:
        """``row[column]``, as a record of the raw pool answers it: the views take either."""
        return getattr(self, column)


Json = dict[str, Any]
EMPTY_FILTERS = text("""'{"attributes": {}, "types": {}}'::jsonb""")


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(Text, nullable=False)
    hashed_password: Mapped[str] = mapped_column(Text, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    is_superuser: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    is_verified: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    slurm_user: Mapped[str | None] = mapped_column(Text)
    cache_dir: Mapped[str | None] = mapped_column(Text)
    username: Mapped[str | None] = mapped_column(Text)
    slurm_accounts: Mapped[list[str]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    # Stamped into each access token at login, raised by a password change: a token of an
    # older generation is refused (the reference keeps old tokens valid).
    token_generation: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    __table_args__ = (Index("uq_users_email_lower", func.lower(email), unique=True),)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    # The target of project_members' (project_id, project_name) key (id alone is unique).
    __table_args__ = (UniqueConstraint("id", "name"),)


class ProjectMember(Base):
    """A user's membership of a project, with the project's name copied in so that the database
    holds the reference's rule "a user has at most one project of a name" (a unique index over
    (user_id, project_name)). The copy cannot drift: it is part of the foreign key to the
    project, which carries a rename over (ON UPDATE CASCADE)."""

    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    project_name: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "user_id"),
        ForeignKeyConstraint(
            ["project_id", "project_name"],
            ["projects.id", "projects.name"],
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        UniqueConstraint("user_id", "project_name"),
        Index("ix_project_members_user_id", "user_id", "project_id"),
    )


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    zarr_dir: Mapped[str] = mapped_column(Text, nullable=False)
    filters: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default=EMPTY_FILTERS)
    history: Mapped[list[Json]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    image_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # Position of the next image appended (keeps the reference's list order).
    next_position: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    position: Mapped[int] = mapped_column(BigInteger, nullable=False)
    zarr_url: Mapped[str] = mapped_column(Text, nullable=False)
    origin: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default="{}")
    types: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default="{}")
    __table_args__ = (
        UniqueConstraint("dataset_id", "zarr_url"),
        UniqueConstraint("dataset_id", "position"),
    )


class ImageFacet(Base):
    """Per dataset, each attribute value (kind 'a') and type value (kind 't') its images have,
    with the positions of those images (``members``: a serialized 64-bit roaring bitmap) and
    their number; kind '*' holds every image (see fractal_grpc.images.bitmaps)."""

    __tablename__ = "image_facets"
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    members: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    __table_args__ = (PrimaryKeyConstraint("dataset_id", "kind", "key", "value"),)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    owner: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str | None] = mapped_column(Text)
    command_non_parallel: Mapped[str | None] = mapped_column(Text)
    command_parallel: Mapped[str | None] = mapped_column(Text)
    meta_non_parallel: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default="{}")
    meta_parallel: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default="{}")
    args_schema_non_parallel: Mapped[Json | None] = mapped_column(JSONB)
    args_schema_parallel: Mapped[Json | None] = mapped_column(JSONB)
    args_schema_version: Mapped[str | None] = mapped_column(Text)
    docs_info: Mapped[str | None] = mapped_column(Text)
    docs_link: Mapped[str | None] = mapped_column(Text)
    input_types: Mapped[dict[str, bool]] = mapped_column(JSONB, nullable=False, server_default="{}")
    output_types: Mapped[dict[str, bool]] = mapped_column(
        JSONB, nullable=False, server_default="{}"
    )
    created_at: Mapped[datetime] = _now()


class Workflow(Base):
    __tablename__ = "workflows"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        # ListWorkflows' keyset order within a project.
        Index("ix_workflows_project_id_id", "project_id", "id"),
    )


class WorkflowTask(Base):
    __tablename__ = "workflow_tasks"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    order: Mapped[int] = mapped_column(Integer, nullable=False)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), nullable=False, index=True)
    task_type: Mapped[str] = mapped_column(Text, nullable=False)
    args_non_parallel: Mapped[Json | None] = mapped_column(JSONB)
    args_parallel: Mapped[Json | None] = mapped_column(JSONB)
    meta_non_parallel: Mapped[Json | None] = mapped_column(JSONB)
    meta_parallel: Mapped[Json | None] = mapped_column(JSONB)
    input_filters: Mapped[Json] = mapped_column(JSONB, nullable=False, server_default=EMPTY_FILTERS)
    __table_args__ = (Index("ix_workflow_tasks_workflow_id_order", "workflow_id", "order"),)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    workflow_id: Mapped[int | None] = mapped_column(ForeignKey("workflows.id", ondelete="SET NULL"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    user_email: Mapped[str] = mapped_column(Text, nullable=False)
    slurm_account: Mapped[str | None] = mapped_column(Text)
    project_dump: Mapped[Json] = mapped_column(JSONB, nullable=False)
    workflow_dump: Mapped[Json] = mapped_column(JSONB, nullable=False)
    dataset_dump: Mapped[Json] = mapped_column(JSONB, nullable=False)
    # The slice's workflow tasks with their tasks, as submitted: what the runner executes.
    tasks_snapshot: Mapped[list[Json]] = mapped_column(JSONB, nullable=False)
    worker_init: Mapped[str | None] = mapped_column(Text)
    working_dir: Mapped[str | None] = mapped_column(Text)
    working_dir_user: Mapped[str | None] = mapped_column(Text)
    first_task_index: Mapped[int] = mapped_column(Integer, nullable=False)
    last_task_index: Mapped[int] = mapped_column(Integer, nullable=False)
    start_timestamp: Mapped[datetime] = _now()
    end_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="submitted")
    log: Mapped[str | None] = mapped_column(Text)
    stop_requested: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    # Per-task progress of the slice (``fractal_grpc.jobs.progress``): [{workflow_task_id,
    # order, task_name, state, calls_done, calls_failed, calls_total}].
    task_statuses: Mapped[list[Json]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    # When a runner first reported the job as running (NULL: still queued).
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="1")
    __table_args__ = (
        # At most one submitted job per dataset, enforced by the database.
        Index(
            "uq_jobs_dataset_submitted",
            "dataset_id",
            unique=True,
            postgresql_where=text("status = 'submitted'"),
        ),
        Index("ix_jobs_rate", "project_id", "workflow_id", "dataset_id", "start_timestamp"),
        # ListJobs' keyset order (id descending) within a project and within a workflow.
        Index("ix_jobs_project_id_id", "project_id", "id"),
        Index("ix_jobs_workflow_id_id", "workflow_id", "id"),
    )


class JobTaskResult(Base):
    """One applied task result: makes ApplyTaskResult idempotent on (job_id, task_order)."""

    __tablename__ = "job_task_results"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    task_order: Mapped[int] = mapped_column(Integer, nullable=False)
    images_updated: Mapped[int] = mapped_column(BigInteger, nullable=False)
    images_created: Mapped[int] = mapped_column(BigInteger, nullable=False)
    images_removed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    applied_at: Mapped[datetime] = _now()
    __table_args__ = (PrimaryKeyConstraint("job_id", "task_order"),)


class RequestRecord(Base):
    """Idempotency keys of mutating creates: a retry returns the first result (AIP-155)."""

    __tablename__ = "request_records"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    method: Mapped[str] = mapped_column(Text, nullable=False)
    request_id: Mapped[str] = mapped_column(Text, nullable=False)
    # NULL only inside the transaction that claimed the key, until its create is done.
    resource_id: Mapped[int | None] = mapped_column(BigInteger)
    # SHA-256 of the request without its request_id (NULL for keys recorded before 0004).
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (PrimaryKeyConstraint("user_id", "method", "request_id"),)


class TaskCollection(Base):
    """One collection of a task package (reference ``CollectionStateV2``, with typed columns).

    At most one collection that has not FAILED per (package, requested version, extras,
    Python): a partial unique index, so two concurrent requests cannot both be recorded. The
    collector working on it holds a lease (``lease_owner`` until ``lease_expires_at``)."""

    __tablename__ = "task_collections"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default="pending")
    package_name: Mapped[str] = mapped_column(Text, nullable=False)
    # '' when not given (the newest version of the index).
    requested_version: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    package_version: Mapped[str | None] = mapped_column(Text)
    # '' when none.
    package_extras: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    python_version: Mapped[str] = mapped_column(Text, nullable=False)
    pins: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, server_default="{}")
    wheel_path: Mapped[str | None] = mapped_column(Text)
    # The file name of an uploaded wheel (its bytes: CollectionWheel).
    uploaded_wheel: Mapped[str | None] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(Text, nullable=False)
    env_dir: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    freeze: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    task_ids: Mapped[list[int]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="1")
    # collect, or a lifecycle activity on ``target_id``: deactivate, reactivate.
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default="collect")
    target_id: Mapped[int | None] = mapped_column(
        ForeignKey("task_collections.id", ondelete="CASCADE")
    )
    # A collection's environment exists and its tasks may run.
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    __table_args__ = (
        Index(
            "uq_task_collections_active",
            "package_name",
            "requested_version",
            "package_extras",
            "python_version",
            unique=True,
            postgresql_where=text("state <> 'failed' AND kind = 'collect'"),
        ),
        Index("ix_task_collections_target_id", "target_id"),
    )


class CollectionWheel(Base):
    """A wheel uploaded for a collection, kept as long as it (reactivation reinstalls it)."""

    __tablename__ = "collection_wheels"
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("task_collections.id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


outbox = outbox_table(Base.metadata)
