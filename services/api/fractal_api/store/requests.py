"""Idempotency keys (AIP-155): every create that carries a request_id goes through ``once``.

The key is claimed in the create's own transaction, before anything is created, with an insert
the database serializes: a concurrent call with the same key waits at that insert until the
first transaction ends. If the first committed, the waiting call replays its result; if it
rolled back (its create was refused), the waiting call claims the key and creates. So every call
with one key gets the first successful result, whatever the concurrency.

A key is scoped to the user and the method (CreateProject and CreateDataset keys never meet)
and remembers a hash of the request it was first used with: the same key with a different
request is refused with FAILED_PRECONDITION, reason REQUEST_ID_REUSED (the request is well
formed; it conflicts with what the key already stands for). Keys are kept as long as the user.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import RequestRecord
from fractal_grpc.grpckit.errors import FailedPrecondition, invalid_field

T = TypeVar("T")

MAX_LENGTH = 128


# Not part of a request's hash: the key itself, and secrets (a fast hash of a password beside
# the user's bcrypt hash would be the weaker of the two).
_UNHASHED = ("request_id", "password")


def request_hash(request: Message) -> bytes:
    """SHA-256 of the request without its request_id (and password), serialized
    deterministically (map entries, Struct keys included, in key order): two requests hash alike
    iff they carry the same values."""
    bare = type(request)()
    bare.CopyFrom(request)
    for name in _UNHASHED:
        if name in request.DESCRIPTOR.fields_by_name:
            bare.ClearField(name)
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).digest()


def method_of(request: Message) -> str:
    """The RPC a request message belongs to: CreateDatasetRequest -> CreateDataset."""
    return request.DESCRIPTOR.name.removesuffix("Request")


async def once(
    session: AsyncSession,
    user_id: int,
    request: Message,
    *,
    create: Callable[[], Awaitable[T]],
    replay: Callable[[int], Awaitable[T]],
    resource_id: Callable[[T], int] = attrgetter("id"),
    method: str | None = None,
    field: str = "request_id",
) -> T:
    """``create()`` the first time a request_id is used; ``replay(id)`` of the object it created
    every later time. Without a request_id, just ``create()``. ``method`` scopes the key when
    ``request`` is a part of the RPC's request (default: ``method_of(request)``), and ``field``
    is the key's path in the RPC's request, for errors."""
    key: str = getattr(request, "request_id", "")
    if not key:
        return await create()
    if len(key) > MAX_LENGTH:
        raise invalid_field(field, f"must have at most {MAX_LENGTH} characters")
    digest = request_hash(request)
    method = method or method_of(request)
    where = (
        RequestRecord.user_id == user_id,
        RequestRecord.method == method,
        RequestRecord.request_id == key,
    )
    claimed = await session.scalar(
        insert(RequestRecord)
        .values(user_id=user_id, method=method, request_id=key, request_hash=digest)
        .on_conflict_do_nothing()
        .returning(RequestRecord.user_id)
    )
    if claimed is None:
        # Another transaction holds or held the key; the insert waited for it to commit.
        earlier = (
            await session.execute(
                select(RequestRecord.resource_id, RequestRecord.request_hash).where(*where)
            )
        ).one()
        if earlier.request_hash is not None and earlier.request_hash != digest:
            raise _reused(field)
        return await replay(earlier.resource_id)
    result = await create()
    await session.execute(
        update(RequestRecord).where(*where).values(resource_id=resource_id(result))
    )
    return result


def _reused(field: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{field} was already used for a different request; use a new request_id for a new request",
        reason="REQUEST_ID_REUSED",
        violations=[(field, "already used for a different request")],
        metadata={"field": field},
    )
