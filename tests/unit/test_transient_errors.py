"""Which dependency failures are transient (UNAVAILABLE / ABORTED with RetryInfo): one table."""

from __future__ import annotations

import asyncpg
import grpc
import nats.errors
import pytest
import sqlalchemy.exc
from google.rpc import error_details_pb2

from fractal_grpc.grpckit.errors import RetryableError
from fractal_grpc.grpckit.transient import describe, transient_error


def wrapped_by_sqlalchemy(
    orig: BaseException, kind: type[sqlalchemy.exc.DBAPIError] = sqlalchemy.exc.DBAPIError
) -> BaseException:
    """As SQLAlchemy raises a driver error: its own exception, ``from`` the driver's."""
    try:
        try:
            raise orig
        except BaseException as inner:
            raise kind("SELECT 1", {}, inner) from inner
    except BaseException as outer:
        return outer


def invalidated() -> BaseException:
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)


U, A = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED

CASES: list[tuple[str, BaseException, grpc.StatusCode | None]] = [
    ("serialization failure", asyncpg.exceptions.SerializationError("x"), A),
    ("deadlock", asyncpg.exceptions.DeadlockDetectedError("x"), A),
    ("lock not available", asyncpg.exceptions.LockNotAvailableError("x"), A),
    ("statement timeout", asyncpg.exceptions.QueryCanceledError("x"), U),
    ("starting up", asyncpg.exceptions.CannotConnectNowError("x"), U),
    ("shutting down", asyncpg.exceptions.AdminShutdownError("x"), U),
    ("crash shutdown", asyncpg.exceptions.CrashShutdownError("x"), U),
    ("too many connections", asyncpg.exceptions.TooManyConnectionsError("x"), U),
    ("connection lost", asyncpg.exceptions.ConnectionDoesNotExistError("x"), U),
    ("connection failure", asyncpg.exceptions.ConnectionFailureError("x"), U),
    ("asyncpg closed connection", asyncpg.exceptions.InterfaceError("connection is closed"), U),
    ("asyncpg pool closing", asyncpg.exceptions.InterfaceError("pool is closing"), U),
    ("connect refused", ConnectionRefusedError(111, "refused"), U),
    ("connect timeout", TimeoutError(), U),
    ("pool exhausted", sqlalchemy.exc.TimeoutError("QueuePool limit reached"), U),
    ("invalidated connection", invalidated(), U),
    (
        "wrapped serialization failure",
        wrapped_by_sqlalchemy(asyncpg.exceptions.SerializationError("x")),
        A,
    ),
    (
        "wrapped shutdown",
        wrapped_by_sqlalchemy(
            asyncpg.exceptions.AdminShutdownError("x"), sqlalchemy.exc.OperationalError
        ),
        U,
    ),
    ("wrapped refused connect", wrapped_by_sqlalchemy(ConnectionRefusedError(111, "x")), U),
    ("nats not connected", nats.errors.ConnectionClosedError(), U),
    ("nats no servers", nats.errors.NoServersError(), U),
    # Permanent: bugs or bad data, never retried.
    ("unique violation", asyncpg.exceptions.UniqueViolationError("x"), None),
    ("NUL in a string", asyncpg.exceptions.CharacterNotInRepertoireError("x"), None),
    ("syntax error", asyncpg.exceptions.PostgresSyntaxError("x"), None),
    (
        "wrapped unique violation",
        wrapped_by_sqlalchemy(
            asyncpg.exceptions.UniqueViolationError("x"), sqlalchemy.exc.IntegrityError
        ),
        None,
    ),
    ("bad query argument", asyncpg.exceptions.DataError("invalid input for query argument"), None),
    ("other interface error", asyncpg.exceptions.InterfaceError("another operation"), None),
    ("a bug", KeyError("x"), None),
    ("a file error", FileNotFoundError("x"), None),
]


@pytest.mark.parametrize(("exc", "code"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_transient_error(exc: BaseException, code: grpc.StatusCode | None) -> None:
    found = transient_error(exc)
    if code is None:
        assert found is None
        return
    assert isinstance(found, RetryableError)
    assert found.code == code
    status = found.to_status()
    assert status.code == code.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() > 0
    # A message for people: no exception class name.
    assert type(exc).__name__ not in found.message


def test_a_cause_chain_that_loops_ends() -> None:
    a, b = KeyError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    assert transient_error(a) is None


def test_describe_is_one_bounded_line() -> None:
    text = describe(ValueError("x" * 1000 + "\nsecond line"))
    assert "\n" not in text and len(text) <= 300
