"""Users: lookup, creation, update, first-superuser bootstrap."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import User
from fractal_api.store import write_unique
from fractal_grpc.auth.passwords import hash_password
from fractal_grpc.auth.principal import Principal
from fractal_grpc.grpckit.errors import AlreadyExists, NotFound, Violations

log = logging.getLogger("fractal.api.users")


async def by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def get(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} not found", metadata={"user_id": str(user_id)})
    return user


def validate_fields(fields: Mapping[str, Any], violations: Violations) -> None:
    """The reference's UserCreate/UserUpdate validators."""
    if "email" in fields:
        email = fields["email"]
        if not email or "@" not in email or email != email.strip():
            violations.add("email", "must be a valid email address")
    if "password" in fields:
        password = fields["password"]
        if len(password) < 4:  # the proto bounds the length above
            violations.add("password", "must have at least 4 characters")
    for name in ("slurm_user", "username", "cache_dir"):
        value = fields.get(name)
        if value is not None and not value.strip():
            violations.add(name, "must not be empty")
    cache_dir = fields.get("cache_dir")
    if cache_dir and not cache_dir.startswith("/"):
        violations.add("cache_dir", "must be an absolute path")
    accounts = fields.get("slurm_accounts")
    if accounts is not None:
        stripped = [a.strip() for a in accounts]
        if any(not a for a in stripped):
            violations.add("slurm_accounts", "items must not be empty")
        if len(set(stripped)) != len(stripped):
            violations.add("slurm_accounts", "items must be unique")


async def create(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    is_superuser: bool = False,
    is_verified: bool = False,
    **extra: Any,
) -> User:
    user = User(
        email=email,
        hashed_password=hash_password(password),
        is_active=True,
        is_superuser=is_superuser,
        is_verified=is_verified,
        slurm_accounts=list(extra.pop("slurm_accounts", None) or []),
        **extra,
    )
    await write_unique(session, user)
    return user


async def ensure_first_superuser(
    session: AsyncSession, *, email: str, password: str, username: str
) -> bool:
    """Create the first superuser unless any superuser exists (reference §4)."""
    exists = await session.scalar(select(User.id).where(User.is_superuser.is_(True)).limit(1))
    if exists is not None:
        return False
    try:
        async with session.begin_nested():
            await create(
                session,
                email=email,
                password=password,
                is_superuser=True,
                is_verified=True,
                username=username,
            )
    except AlreadyExists:
        log.info("first superuser %s already exists", email)
        return False
    log.info("created first superuser %s", email)
    return True


async def update(session: AsyncSession, user: User, fields: Mapping[str, Any]) -> None:
    """Change the given fields (a password is hashed); a taken email is ALREADY_EXISTS."""
    for name, value in fields.items():
        if name == "password":
            user.hashed_password = hash_password(value)
        else:
            setattr(user, name, value)
    await write_unique(session, user)


async def list_page(session: AsyncSession, *, after_id: int, limit: int) -> list[User]:
    result = await session.execute(
        select(User).where(User.id > after_id).order_by(User.id).limit(limit)
    )
    return list(result.scalars().all())


_PRINCIPAL = """
    SELECT id, email, is_active, is_superuser, is_verified, username, slurm_user, cache_dir,
           slurm_accounts
    FROM api.users WHERE id = $1
"""


async def load_principal(pg: asyncpg.Pool, user_id: int) -> Principal | None:
    """The user as a Principal, or None (runs on most calls before the cache: raw asyncpg)."""
    row = await pg.fetchrow(_PRINCIPAL, user_id)
    if row is None:
        return None
    return Principal(
        user_id=row["id"],
        email=row["email"],
        is_active=row["is_active"],
        is_superuser=row["is_superuser"],
        is_verified=row["is_verified"],
        username=row["username"],
        slurm_user=row["slurm_user"],
        cache_dir=row["cache_dir"],
        slurm_accounts=list(json.loads(row["slurm_accounts"])),
    )
