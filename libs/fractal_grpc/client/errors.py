"""What a failed call raises: one exception type per status code family, carrying the code, the
message and the ``google.rpc.Status`` details the services send (``ErrorInfo`` reason and
metadata, ``BadRequest`` field violations, ``RetryInfo`` delay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


@dataclass(eq=False)
class FractalError(Exception):
    """A call that did not succeed. ``code`` is the gRPC status code."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[FieldViolation] = field(default_factory=list)
    retry_delay: float | None = None
    method: str = ""

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.field_violations:
            text += "".join(f"\n  {v.field}: {v.description}" for v in self.field_violations)
        return text


class InvalidArgumentError(FractalError):
    """INVALID_ARGUMENT or OUT_OF_RANGE: the request itself is wrong."""


class NotFoundError(FractalError):
    """NOT_FOUND: no such object, or not the caller's."""


class AlreadyExistsError(FractalError):
    """ALREADY_EXISTS: a uniqueness rule refused the request."""


class PermissionDeniedError(FractalError):
    """PERMISSION_DENIED, or UNAUTHENTICATED (see ``code``)."""


class ConflictError(FractalError):
    """FAILED_PRECONDITION, ABORTED, RESOURCE_EXHAUSTED: refused in the current state."""


class ServerError(FractalError):
    """UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ...: the server or the way to it."""


_CLASSES: dict[grpc.StatusCode, type[FractalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ConflictError,
}


def from_rpc_error(exc: grpc.aio.AioRpcError, method: str = "") -> FractalError:
    """The exception for a failed call, with the details of its status."""
    code = exc.code()
    cls = _CLASSES.get(code, ServerError)
    error = cls(code=code, message=exc.details() or code.name, method=method)
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details inconsistent with the status: keep the plain message
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error.reason = info.reason
            error.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            error.field_violations.extend(
                FieldViolation(v.field, v.description) for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            error.retry_delay = retry.retry_delay.ToMilliseconds() / 1000
    return error
