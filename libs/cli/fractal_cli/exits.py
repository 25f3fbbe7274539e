"""Exit codes: one per kind of failure, so that scripts can tell them apart."""

from __future__ import annotations

import grpc

from fractal_grpc.client import FractalError

OK = 0
#: Refused in the current state: exists already, in use, a precondition, a rate limit.
REFUSED = 1
#: The command line or the request is wrong (click's own usage errors are 2 too).
USAGE = 2
NOT_FOUND = 3
#: Not logged in, bad credentials, or not allowed.
PERMISSION = 4
#: The server could not be reached or failed.
SERVER = 5
#: The job (or task collection) that was watched ended FAILED.
JOB_FAILED = 6

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.OUT_OF_RANGE: USAGE,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: PERMISSION,
    grpc.StatusCode.UNAUTHENTICATED: PERMISSION,
    grpc.StatusCode.ALREADY_EXISTS: REFUSED,
    grpc.StatusCode.FAILED_PRECONDITION: REFUSED,
    grpc.StatusCode.ABORTED: REFUSED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: REFUSED,
}


def exit_code(error: FractalError) -> int:
    return _BY_CODE.get(error.code, SERVER)
