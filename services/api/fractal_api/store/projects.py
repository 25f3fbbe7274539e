"""Projects, membership, and the ownership checks every project-scoped RPC starts with.

An object that exists but is not the caller's (a project they are not a member of, a dataset,
workflow or job of another project) answers exactly like one that does not exist: NOT_FOUND
with the same message, so ids of others' objects cannot be probed. This departs from the
reference's 403 and 422, which tell a stranger which ids exist.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import ColumnElement, exists, literal, select, update
from sqlalchemy import delete as sa_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Dataset, Job, Project, ProjectMember, Workflow
from fractal_api.store import write_unique
from fractal_api.store.conflicts import conflict, violated_constraint
from fractal_grpc.data.rules import rename_needed
from fractal_grpc.grpckit.errors import InvalidArgument, NotFound


def _positive(field: str, value: int) -> None:
    if value <= 0:
        raise InvalidArgument(
            f"{field}: must be positive", violations=[(field, "must be positive")]
        )


def not_found(label: str, field: str, object_id: int) -> NotFound:
    """The one answer for a missing object and for an object of someone else."""
    return NotFound(f"{label} not found", metadata={field: str(object_id)})


def _check_membership(project_id: int, found: bool, member: bool) -> None:
    if not (found and member):
        raise not_found("Project", "project_id", project_id)


def _is_member(project_id: int, user_id: int) -> ColumnElement[bool]:
    return exists().where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)


async def get_checked(session: AsyncSession, project_id: int, user_id: int) -> Project:
    """The project, if the user is a member (NOT_FOUND otherwise)."""
    _positive("project_id", project_id)
    row = (
        await session.execute(
            select(Project, _is_member(project_id, user_id)).where(Project.id == project_id)
        )
    ).first()
    _check_membership(project_id, row is not None, bool(row and row[1]))
    assert row is not None
    project: Project = row[0]
    return project


async def _child_checked(
    session: AsyncSession,
    model: type[Dataset] | type[Workflow] | type[Job],
    label: str,
    project_id: int,
    object_id: int,
    user_id: int,
) -> Dataset | Workflow | Job:
    """One query for the three checks of the reference's helpers: the project exists, the user
    is a member, the object exists and belongs to that project."""
    _positive("project_id", project_id)
    field = f"{label.lower()}_id"
    _positive(field, object_id)
    one_row = select(literal(1).label("one")).subquery()
    row = (
        await session.execute(
            select(
                select(Project.id).where(Project.id == project_id).exists(),
                _is_member(project_id, user_id),
                model,
            )
            .select_from(one_row)
            .outerjoin(model, model.id == object_id)
        )
    ).one()
    _check_membership(project_id, bool(row[0]), bool(row[1]))
    obj: Dataset | Workflow | Job | None = row[2]  # type: ignore[assignment]
    if obj is None or obj.project_id != project_id:
        raise not_found(label, field, object_id)
    return obj


async def dataset_checked(
    session: AsyncSession, project_id: int, dataset_id: int, user_id: int
) -> Dataset:
    obj = await _child_checked(session, Dataset, "Dataset", project_id, dataset_id, user_id)
    assert isinstance(obj, Dataset)
    return obj


async def workflow_checked(
    session: AsyncSession, project_id: int, workflow_id: int, user_id: int
) -> Workflow:
    obj = await _child_checked(session, Workflow, "Workflow", project_id, workflow_id, user_id)
    assert isinstance(obj, Workflow)
    return obj


async def job_checked(session: AsyncSession, project_id: int, job_id: int, user_id: int) -> Job:
    obj = await _child_checked(session, Job, "Job", project_id, job_id, user_id)
    assert isinstance(obj, Job)
    return obj


async def create(session: AsyncSession, name: str, user_id: int) -> Project:
    """A project with its creator as member; the membership's unique (user_id, project_name)
    refuses a second project of one name for a user, concurrent creates included."""
    project = Project(name=name)
    session.add(project)
    await session.flush()
    await write_unique(
        session, ProjectMember(project_id=project.id, project_name=name, user_id=user_id)
    )
    return project


_LIST_FOR_USER = """
    SELECT p.id, p.name, p.created_at
    FROM api.projects AS p JOIN api.project_members AS m ON m.project_id = p.id
    WHERE m.user_id = $1 AND p.id > $2
    ORDER BY p.id
    LIMIT $3
"""


async def list_for_user(
    pg: asyncpg.Pool, user_id: int, *, after_id: int, limit: int
) -> list[asyncpg.Record]:
    """A page of the user's projects (a hot path: raw asyncpg)."""
    return await pg.fetch(_LIST_FOR_USER, user_id, after_id, limit)


async def lock(session: AsyncSession, project_id: int) -> None:
    """Lock the project row for this transaction: a job submitted meanwhile (its insert takes a
    key-share lock on the project through the foreign key) waits for us, and we for it."""
    await session.execute(select(Project.id).where(Project.id == project_id).with_for_update())


async def rename(session: AsyncSession, project: Project, name: str) -> Project:
    """Rename ``project``; the rename cascades into the memberships' copy of the name, whose
    unique (user_id, project_name) refuses a name another project of a member already has."""
    if not rename_needed(project.name, name):
        return project
    try:
        async with session.begin_nested():
            await session.execute(update(Project).where(Project.id == project.id).values(name=name))
    except IntegrityError as exc:
        error = conflict(violated_constraint(exc), {"project_name": name})
        if error is None:
            raise
        raise error from None
    await session.refresh(project)
    return project


async def submitted_jobs(session: AsyncSession, where: ColumnElement[bool]) -> list[int]:
    """The ids of the submitted jobs matching ``where``."""
    result = await session.execute(
        select(Job.id).where(where, Job.status == "submitted").order_by(Job.id)
    )
    return list(result.scalars())


async def delete(session: AsyncSession, project_id: int) -> None:
    """Delete a project (checked and locked by the caller). The foreign keys carry the cascade
    of reference §2.4 out: datasets (with images and facets), workflows (with their workflow
    tasks) and memberships go; jobs stay, their project/workflow/dataset links set to NULL."""
    await session.execute(sa_delete(Project).where(Project.id == project_id))
