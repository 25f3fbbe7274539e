"""Domain errors and their gRPC status, with ``google.rpc.Status`` details.

Servicers raise these; one interceptor turns them into a status with ``ErrorInfo`` (always) and
``BadRequest.field_violations`` (for invalid input). Messages are for people: no tracebacks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "fractal.analytics"

# Bounds on what an error carries back: the whole status travels in the response's trailing
# metadata, which the transport limits (about 8 kB), and no input is echoed unbounded.
MAX_MESSAGE_CHARS = 500
MAX_FIELD_CHARS = 100
MAX_DESCRIPTION_CHARS = 200
MAX_VIOLATIONS = 10


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with "…"), NUL characters shown as "\\0"."""
    if "\x00" in text:
        text = text.replace("\x00", "\\0")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DomainError(Exception):
    """A client-visible error with a gRPC code and a machine-readable reason."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    reason: str = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Iterable[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        message = bounded(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.violations = [
            (bounded(f, MAX_FIELD_CHARS), bounded(d, MAX_DESCRIPTION_CHARS))
            for f, d in itertools.islice(violations, MAX_VIOLATIONS)
        ]
        self.metadata = metadata or {}

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        )
        details.append(info)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


def invalid_field(field: str, description: str) -> InvalidArgument:
    """The common case: one field is wrong."""
    return InvalidArgument(f"{field}: {description}", violations=[(field, description)])


class Violations:
    """Collects field violations and raises them together as one INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def raise_if_any(self) -> None:
        if self.items:
            first = "; ".join(f"{f}: {d}" for f, d in self.items[:5])
            more = f" (and {len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise InvalidArgument(f"invalid request: {first}{more}", violations=self.items)


class RetryableError(DomainError):
    """A dependency blinked: the same request may succeed later. The status carries a
    ``google.rpc.RetryInfo`` with the delay a client should wait before trying again."""

    def __init__(self, message: str, *, retry_delay: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_delay = retry_delay

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(round(self.retry_delay * 1000))
        status.details.add().Pack(info)
        return status


class Unavailable(RetryableError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Aborted(RetryableError):
    """A conflict with a concurrent transaction (serialization failure, deadlock)."""

    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"
