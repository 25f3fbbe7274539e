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
from fractal_grpc.grpckit.errors import AlreadyExists, NotFound
from fractal_grpc.users.rules import ends_old_tokens

log = logging.getLogger("fractal.api.users")


async def by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def get(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} not found", metadata={"user_id": str(user_id)})
    return user


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
    """Change the given fields (validated by ``fractal_grpc.users.rules``); a taken email is
    ALREADY_EXISTS. A new password is hashed and ends the user's older tokens."""
    for name, value in fields.items():
        if name == "password":
            user.hashed_password = hash_password(value)
        else:
            setattr(user, name, value)
    if ends_old_tokens(fields):
        user.token_generation += 1
    await write_unique(session, user)


async def list_page(session: AsyncSession, *, after_id: int, limit: int) -> list[User]:
    result = await session.execute(
        select(User).where(User.id > after_id).order_by(User.id).limit(limit)
    )
    return list(result.scalars().all())


_PRINCIPAL = """
    SELECT id, email, is_active, is_superuser, is_verified, username, slurm_user, cache_dir,
           slurm_accounts, token_generation
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
        token_generation=row["token_generation"],
    )
