"""Task collections: the record, its command and events, the collector's lease, and the
registration of a collection's tasks in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fractal.events.v1 import collection_events_pb2
from fractal_api import views
from fractal_api.models import CollectionWheel, Task, TaskCollection, WorkflowTask, outbox
from fractal_api.store import write_unique
from fractal_api.store.conflicts import violated_constraint
from fractal_grpc.collection.packages import PackageSpec
from fractal_grpc.events.bus import Subjects
from fractal_grpc.events.outbox import add_to_outbox
from fractal_grpc.grpckit.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound

PENDING, INSTALLING, OK, FAILED = "pending", "installing", "OK", "failed"
COLLECT, DEACTIVATE, REACTIVATE = "collect", "deactivate", "reactivate"
ENDED = (OK, FAILED)
ACTIVE_INDEX = "uq_task_collections_active"


def already_exists(existing: TaskCollection) -> AlreadyExists:
    """The error for a package already collected or being collected, naming that collection."""
    doing = "is being collected" if existing.state in (PENDING, INSTALLING) else "is collected"
    what = existing.package_name + (
        f"[{existing.package_extras}]" if existing.package_extras else ""
    )
    version = existing.package_version or existing.requested_version or "(newest)"
    return AlreadyExists(
        f"{what} {version} for Python {existing.python_version} {doing}: collection {existing.id}",
        reason="COLLECTION_EXISTS",
        metadata={"collection_id": str(existing.id), "field": "package"},
    )


class CollectionRace(Exception):
    """A concurrent request for the same package was recorded first (its transaction
    committed while this one waited at the unique index): this transaction is spoiled; look
    the other one up in a new one (``already_exists``)."""


async def find_active(session: AsyncSession, spec: PackageSpec) -> TaskCollection | None:
    """A collection of the same package, extras and Python that has not failed, and that asked
    for (or installed) the same version; for no version, one that asked for none."""
    query = select(TaskCollection).where(
        TaskCollection.kind == COLLECT,
        TaskCollection.package_name == spec.name,
        TaskCollection.package_extras == (spec.extras or ""),
        TaskCollection.python_version == spec.python_version,
        TaskCollection.state != FAILED,
    )
    if spec.version is None:
        query = query.where(TaskCollection.requested_version == "")
    else:
        query = query.where(
            or_(
                TaskCollection.requested_version == spec.version,
                TaskCollection.package_version == spec.version,
            )
        )
    return (await session.execute(query.order_by(TaskCollection.id).limit(1))).scalar_one_or_none()


async def emit_changed(session: AsyncSession, subjects: Subjects, row: TaskCollection) -> None:
    await add_to_outbox(
        session,
        outbox,
        subjects.collection_event(row.id),
        collection_events_pb2.CollectionChanged(collection=views.collection_view(row)),
    )


async def create(
    session: AsyncSession,
    subjects: Subjects,
    spec: PackageSpec,
    user_id: int,
    *,
    upload: CollectionWheel | None = None,
) -> TaskCollection:
    """Record a PENDING collection and its command. A concurrent request for the same package
    waits at the unique index, then raises ``CollectionRace``."""
    existing = await find_active(session, spec)
    if existing is not None:
        raise already_exists(existing)
    row = TaskCollection(
        user_id=user_id,
        package_name=spec.name,
        requested_version=spec.version or "",
        package_extras=spec.extras or "",
        python_version=spec.python_version,
        pins=spec.pins,
        wheel_path=spec.wheel_path if upload is None else None,
        uploaded_wheel=upload.filename if upload is not None else None,
        origin=spec.origin,
        package_version=spec.version if spec.wheel_path else None,
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        if violated_constraint(exc) != ACTIVE_INDEX:
            raise
        raise CollectionRace() from None
    if upload is not None:
        upload.collection_id = row.id
        session.add(upload)
        await session.flush()
    await session.refresh(row)
    await add_to_outbox(
        session,
        outbox,
        subjects.collection_submit,
        collection_events_pb2.CollectionSubmitted(collection_id=row.id),
    )
    await emit_changed(session, subjects, row)
    return row


async def get(session: AsyncSession, collection_id: int, *, lock: bool = False) -> TaskCollection:
    query = select(TaskCollection).where(TaskCollection.id == collection_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(
            f"Collection {collection_id} not found",
            metadata={"collection_id": str(collection_id)},
        )
    return row


async def list_page(
    session: AsyncSession, *, before_id: int | None, limit: int
) -> Sequence[TaskCollection]:
    query = select(TaskCollection)
    if before_id is not None:
        query = query.where(TaskCollection.id < before_id)
    return (
        (await session.execute(query.order_by(TaskCollection.id.desc()).limit(limit)))
        .scalars()
        .all()
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _touch(row: TaskCollection) -> None:
    row.version += 1
    row.updated_at = func.now()


async def _flush(session: AsyncSession, row: TaskCollection) -> None:
    await session.flush()
    await session.refresh(row)


async def claim(
    session: AsyncSession, subjects: Subjects, row: TaskCollection, owner: str, lease: float
) -> bool:
    """Take the lease (the row is locked): PENDING, or INSTALLING with an expired lease or
    our own. An ended collection, or one another live collector holds, is not claimed."""
    if row.state in ENDED:
        return False
    held = (
        row.state == INSTALLING
        and row.lease_owner not in (None, owner)
        and row.lease_expires_at is not None
        and row.lease_expires_at > _now()
    )
    if held:
        return False
    if row.lease_owner != owner:
        row.attempts += 1
    row.state = INSTALLING
    row.lease_owner = owner
    row.lease_expires_at = _now() + timedelta(seconds=lease)
    _touch(row)
    await _flush(session, row)
    await emit_changed(session, subjects, row)
    return True


def check_lease(row: TaskCollection, owner: str) -> None:
    if row.state != INSTALLING or row.lease_owner != owner:
        raise FailedPrecondition(
            f"collection {row.id} is not held by {owner}",
            reason="LEASE_LOST",
            metadata={"collection_id": str(row.id)},
        )


async def report(
    session: AsyncSession,
    subjects: Subjects,
    row: TaskCollection,
    owner: str,
    lease: float,
    *,
    log: str,
    env_dir: str | None,
    package_version: str | None,
) -> None:
    check_lease(row, owner)
    row.lease_expires_at = _now() + timedelta(seconds=lease)
    changed = bool(log) or env_dir is not None or package_version is not None
    if log:
        row.log = row.log + log
    if env_dir is not None:
        row.env_dir = env_dir
    if package_version is not None:
        row.package_version = package_version
    if changed:
        _touch(row)
    await _flush(session, row)
    if changed:
        await emit_changed(session, subjects, row)


async def fail(
    session: AsyncSession, subjects: Subjects, row: TaskCollection, *, log: str, error: str
) -> None:
    await session.refresh(row)  # after a rolled-back savepoint its attributes are expired
    row.state = FAILED
    row.log = row.log + log
    row.error = error
    row.lease_owner = None
    row.lease_expires_at = None
    _touch(row)
    await _flush(session, row)
    await emit_changed(session, subjects, row)


async def succeed(
    session: AsyncSession,
    subjects: Subjects,
    row: TaskCollection,
    *,
    log: str,
    package_version: str,
    env_dir: str,
    freeze: str,
    tasks: list[dict[str, Any]],
) -> None:
    """Register every task (no owner) in one savepoint and end OK; a source already in use
    ends the collection FAILED instead, with no task registered."""
    try:
        async with session.begin_nested():
            created = []
            for fields in tasks:
                task = Task(owner=None, version=package_version, **fields)
                await write_unique(session, task)
                created.append(task)
    except DomainError as exc:
        await fail(
            session,
            subjects,
            row,
            log=log,
            error=f"Cannot register the package's tasks: {exc.message}",
        )
        return
    row.state = OK
    row.log = row.log + log
    row.package_version = package_version
    row.env_dir = env_dir
    row.freeze = freeze
    row.task_ids = [t.id for t in created]
    row.lease_owner = None
    row.lease_expires_at = None
    _touch(row)
    await _flush(session, row)
    await emit_changed(session, subjects, row)


async def _refuse_if_busy(session: AsyncSession, collection_id: int) -> None:
    """FAILED_PRECONDITION while an activity on the collection is pending or installing."""
    busy = (
        await session.execute(
            select(TaskCollection.id).where(
                TaskCollection.target_id == collection_id,
                TaskCollection.state.in_((PENDING, INSTALLING)),
            )
        )
    ).scalar_one_or_none()
    if busy is not None:
        raise FailedPrecondition(
            f"Activity {busy} on collection {collection_id} is in progress",
            reason="ACTIVITY_IN_PROGRESS",
            metadata={"collection_id": str(busy)},
        )


async def start_activity(
    session: AsyncSession, subjects: Subjects, target: TaskCollection, kind: str, user_id: int
) -> TaskCollection:
    """Record a lifecycle activity on ``target`` (locked by the caller) and send its command.
    Deactivating makes the package's tasks unrunnable at once; reactivating, only once done."""
    if target.kind != COLLECT or target.state != OK:
        raise FailedPrecondition(
            f"Collection {target.id} is not a finished collection",
            reason="COLLECTION_NOT_OK",
            metadata={"collection_id": str(target.id)},
        )
    await _refuse_if_busy(session, target.id)
    if (kind == DEACTIVATE) != target.active:
        raise FailedPrecondition(
            f"Collection {target.id} is already {'active' if target.active else 'inactive'}",
            reason="ALREADY_ACTIVE" if target.active else "ALREADY_INACTIVE",
            metadata={"collection_id": str(target.id)},
        )
    if kind == DEACTIVATE:
        target.active = False
        _touch(target)
    activity = TaskCollection(
        kind=kind,
        target_id=target.id,
        user_id=user_id,
        package_name=target.package_name,
        requested_version=target.requested_version,
        package_version=target.package_version,
        package_extras=target.package_extras,
        python_version=target.python_version,
        pins=target.pins,
        wheel_path=target.wheel_path,
        uploaded_wheel=target.uploaded_wheel,
        origin=target.origin,
        env_dir=target.env_dir,
        freeze=target.freeze,
    )
    session.add(activity)
    await session.flush()
    await session.refresh(activity)
    await session.refresh(target)
    await add_to_outbox(
        session,
        outbox,
        subjects.collection_submit,
        collection_events_pb2.CollectionSubmitted(collection_id=activity.id),
    )
    await emit_changed(session, subjects, activity)
    await emit_changed(session, subjects, target)
    return activity


async def activity_done(
    session: AsyncSession, subjects: Subjects, row: TaskCollection, *, log: str
) -> None:
    """End an activity OK; a reactivation makes its collection's tasks runnable again."""
    if row.kind == REACTIVATE and row.target_id is not None:
        target = await get(session, row.target_id, lock=True)
        target.active = True
        _touch(target)
        await _flush(session, target)
        await emit_changed(session, subjects, target)
    row.state = OK
    row.log = row.log + log
    row.lease_owner = None
    row.lease_expires_at = None
    _touch(row)
    await _flush(session, row)
    await emit_changed(session, subjects, row)


async def inactive_packages(session: AsyncSession, task_ids: Sequence[int]) -> list[str]:
    """The deactivated packages ("name version") that the given tasks belong to."""
    if not task_ids:
        return []
    rows = await session.execute(
        select(TaskCollection.package_name, TaskCollection.package_version)
        .where(
            TaskCollection.kind == COLLECT,
            TaskCollection.state == OK,
            TaskCollection.active.is_(False),
            or_(*(TaskCollection.task_ids.contains([i]) for i in sorted(set(task_ids)))),
        )
        .order_by(TaskCollection.id)
    )
    return [f"{name} {version}" for name, version in rows]


async def wheel_of(session: AsyncSession, collection: TaskCollection) -> CollectionWheel:
    """The uploaded wheel of a collection (or of the collection an activity acts on)."""
    owner = collection.target_id if collection.kind != COLLECT else collection.id
    wheel = await session.get(CollectionWheel, owner)
    if wheel is None:
        raise NotFound(f"Collection {collection.id} has no uploaded wheel")
    return wheel


async def delete_collection(session: AsyncSession, row: TaskCollection) -> None:
    """Delete a FAILED or deactivated collection (``row`` locked) with its tasks; its
    activities and uploaded wheel go with it (foreign keys). Refused, with nothing deleted,
    while it is active or busy, or while a workflow uses one of its tasks."""
    if row.kind != COLLECT:
        raise FailedPrecondition(
            f"Record {row.id} is an activity, not a collection", reason="NOT_A_COLLECTION"
        )
    if row.state != FAILED and (row.state != OK or row.active):
        raise FailedPrecondition(
            f"Collection {row.id} must be deactivated (or have failed) before it is deleted",
            reason="COLLECTION_ACTIVE",
            metadata={"collection_id": str(row.id)},
        )
    await _refuse_if_busy(session, row.id)
    if row.task_ids:
        # Row locks on the tasks wait out (then block) a workflow task being added with one.
        await session.execute(select(Task.id).where(Task.id.in_(row.task_ids)).with_for_update())
        used = (
            (
                await session.execute(
                    select(WorkflowTask.workflow_id)
                    .where(WorkflowTask.task_id.in_(row.task_ids))
                    .distinct()
                    .order_by(WorkflowTask.workflow_id)
                )
            )
            .scalars()
            .all()
        )
        if used:
            ids = ",".join(str(w) for w in used)
            raise FailedPrecondition(
                f"Cannot delete collection {row.id}: its tasks are used by workflow(s) {ids}",
                reason="TASK_IN_USE",
                metadata={"workflow_ids": ids},
            )
        await session.execute(delete(Task).where(Task.id.in_(row.task_ids)))
    await session.execute(delete(TaskCollection).where(TaskCollection.id == row.id))
