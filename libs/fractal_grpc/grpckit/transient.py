"""Which failures of a dependency are transient: the one classification the error interceptor
uses to answer UNAVAILABLE or ABORTED (with ``RetryInfo``) instead of INTERNAL.

Transient: the database cannot be reached or is going down or starting up, a connection was
lost mid-statement, the pool had no connection to give in time, a statement or connect timeout,
too many connections; a serialization failure or a deadlock (ABORTED: the transaction lost a
conflict and can be run again); NATS not connected. The exception is looked for along the
``__cause__`` / ``__context__`` chain, since SQLAlchemy wraps the driver's errors (asyncpg's,
through its DBAPI adapter). Anything else is a bug and stays INTERNAL.
"""

from __future__ import annotations

import asyncpg
import nats.errors
import sqlalchemy.exc

from fractal_grpc.grpckit.errors import Aborted, RetryableError, Unavailable

__all__ = ["ABORTED_RETRY_SECONDS", "UNAVAILABLE_RETRY_SECONDS", "describe", "transient_error"]

#: The delay a client is told to wait after a dependency was unreachable.
UNAVAILABLE_RETRY_SECONDS = 1.0
#: The delay after a lost conflict (another transaction is about to commit).
ABORTED_RETRY_SECONDS = 0.1

# SQLSTATE codes (PostgreSQL appendix A) of a conflict worth running again.
_CONFLICT_STATES = frozenset({"40001", "40P01", "55P03"})
# SQLSTATE classes and codes of an unavailable server: connection exceptions (08),
# insufficient resources (53: too many connections, out of memory or disk), operator
# intervention (57P01-57P05: shutdown, crash, starting up; 57014: a statement timeout), and
# system errors (58: I/O).
_UNAVAILABLE_CLASSES = ("08", "53", "58")
_UNAVAILABLE_STATES = frozenset({"57014", "57P01", "57P02", "57P03", "57P04", "57P05"})

_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    # Pool exhaustion (QueuePool's "limit ... reached, connection timed out").
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    # asyncpg: a connection closed under a statement, a pool closing, a connect that failed.
    asyncpg.exceptions.PostgresConnectionError,
    # A connect refused or reset, a host name that did not resolve, a connect timeout.
    ConnectionError,
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)


def transient_error(exc: BaseException) -> RetryableError | None:
    """The retryable status for ``exc`` when it (or an exception it wraps) is a transient
    failure of a dependency; None when it is not."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify_one(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _classify_one(exc: BaseException) -> RetryableError | None:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return _unavailable()
    state = _sqlstate(exc)
    if state is not None:
        if state in _CONFLICT_STATES:
            return Aborted(
                "the request conflicted with a concurrent one; retry it",
                retry_delay=ABORTED_RETRY_SECONDS,
                reason="CONFLICT_RETRY",
            )
        if state in _UNAVAILABLE_STATES or state.startswith(_UNAVAILABLE_CLASSES):
            return _unavailable()
        return None
    if isinstance(exc, _UNAVAILABLE_TYPES) or _closed_connection(exc):
        return _unavailable()
    return None


def _closed_connection(exc: BaseException) -> bool:
    """asyncpg's "connection is closed" / "pool is closing" (its other interface errors, such
    as a bad query argument, are not transient)."""
    return (
        isinstance(exc, asyncpg.exceptions.InterfaceError)
        and not isinstance(exc, asyncpg.exceptions.DataError)
        and ("is closed" in str(exc) or "is closing" in str(exc))
    )


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error (asyncpg's, or SQLAlchemy's adapted DBAPI error)."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _unavailable() -> Unavailable:
    return Unavailable(
        "the database is unavailable; retry later",
        retry_delay=UNAVAILABLE_RETRY_SECONDS,
        reason="DEPENDENCY_UNAVAILABLE",
    )


def describe(exc: BaseException) -> str:
    """For the server's log only (never a client's message): the exception, on one line."""
    lines = f"{type(exc).__name__}: {exc}".splitlines()
    return lines[0][:300] if lines else type(exc).__name__
