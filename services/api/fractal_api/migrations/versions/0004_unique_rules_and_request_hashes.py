"""project names unique per user in the database; request ids remember their request

- ``project_members`` gains ``project_name``, a copy of the project's name that is part of its
  foreign key to ``projects`` (ON UPDATE CASCADE carries a rename over), and a unique constraint
  over ``(user_id, project_name)``: the reference's "a user has at most one project of a name",
  held by the database instead of a check before the insert.
- ``request_records`` gains ``request_hash`` (the request without its request_id, hashed), so a
  request_id reused for a different request is refused; ``resource_id`` is NULL while the
  transaction that claimed a key is still creating its object.

Existing duplicates (a user with two projects of one name, possible before this revision under
concurrent creates) are renamed: every such project but the oldest gets " (<id>)" appended to its
name, and each rename is logged. If a renamed name still collides, the upgrade stops with a
message that names the projects, to be renamed by hand.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:30:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

_RENAME_DUPLICATES = """
    UPDATE api.projects AS p SET name = p.name || ' (' || p.id || ')'
    WHERE EXISTS (
        SELECT 1
        FROM api.project_members AS mine
        JOIN api.project_members AS theirs ON theirs.user_id = mine.user_id
        JOIN api.projects AS older ON older.id = theirs.project_id
        WHERE mine.project_id = p.id AND older.name = p.name AND older.id < p.id
    )
    RETURNING p.id, p.name
"""

_REMAINING_DUPLICATES = """
    SELECT m.user_id, p.name, array_agg(p.id ORDER BY p.id)
    FROM api.project_members AS m JOIN api.projects AS p ON p.id = m.project_id
    GROUP BY m.user_id, p.name HAVING count(*) > 1
    ORDER BY m.user_id, p.name
    LIMIT 20
"""


def upgrade() -> None:
    connection = op.get_bind()
    for project_id, name in connection.execute(sa.text(_RENAME_DUPLICATES)):
        log.warning(
            "project %s renamed to %r: its user had an older project of that name", project_id, name
        )
    remaining = connection.execute(sa.text(_REMAINING_DUPLICATES)).all()
    if remaining:
        listed = "; ".join(f"user {u}: {n!r} in projects {ids}" for u, n, ids in remaining)
        raise RuntimeError(
            "cannot make project names unique per user: after renaming, these users still "
            f"have several projects of one name ({listed}). Rename them and upgrade again."
        )

    op.create_unique_constraint(
        op.f("uq_projects_id_name"), "projects", ["id", "name"], schema="api"
    )
    op.add_column(
        "project_members", sa.Column("project_name", sa.Text(), nullable=True), schema="api"
    )
    op.execute(
        "UPDATE api.project_members AS m SET project_name = p.name"
        " FROM api.projects AS p WHERE p.id = m.project_id"
    )
    op.alter_column("project_members", "project_name", nullable=False, schema="api")
    op.drop_constraint(
        op.f("fk_project_members_project_id_projects"),
        "project_members",
        type_="foreignkey",
        schema="api",
    )
    op.create_foreign_key(
        op.f("fk_project_members_project_id_projects"),
        "project_members",
        "projects",
        ["project_id", "project_name"],
        ["id", "name"],
        source_schema="api",
        referent_schema="api",
        onupdate="CASCADE",
        ondelete="CASCADE",
    )
    op.create_unique_constraint(
        op.f("uq_project_members_user_id_project_name"),
        "project_members",
        ["user_id", "project_name"],
        schema="api",
    )

    op.alter_column("request_records", "resource_id", nullable=True, schema="api")
    op.add_column(
        "request_records", sa.Column("request_hash", sa.LargeBinary(), nullable=True), schema="api"
    )


def downgrade() -> None:
    op.drop_column("request_records", "request_hash", schema="api")
    op.execute("DELETE FROM api.request_records WHERE resource_id IS NULL")
    op.alter_column("request_records", "resource_id", nullable=False, schema="api")

    op.drop_constraint(
        op.f("uq_project_members_user_id_project_name"),
        "project_members",
        type_="unique",
        schema="api",
    )
    op.drop_constraint(
        op.f("fk_project_members_project_id_projects"),
        "project_members",
        type_="foreignkey",
        schema="api",
    )
    op.create_foreign_key(
        op.f("fk_project_members_project_id_projects"),
        "project_members",
        "projects",
        ["project_id"],
        ["id"],
        source_schema="api",
        referent_schema="api",
        ondelete="CASCADE",
    )
    op.drop_column("project_members", "project_name", schema="api")
    op.drop_constraint(op.f("uq_projects_id_name"), "projects", type_="unique", schema="api")
