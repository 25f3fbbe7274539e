"""What a failed execution attempt means for its job: a table."""

from __future__ import annotations

import asyncpg
import grpc
import grpc.aio
import pytest

from fractal_runner.attempts import Verdict, verdict


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


S = grpc.StatusCode
CASES = [
    # api, or the way to it, failed: not the job's fault, the attempt is run again.
    (rpc_error(S.UNAVAILABLE), Verdict.RETRY),
    (rpc_error(S.DEADLINE_EXCEEDED), Verdict.RETRY),
    (rpc_error(S.ABORTED), Verdict.RETRY),
    (rpc_error(S.INTERNAL), Verdict.RETRY),
    (rpc_error(S.UNKNOWN), Verdict.RETRY),
    (rpc_error(S.UNAUTHENTICATED), Verdict.RETRY),
    (rpc_error(S.PERMISSION_DENIED), Verdict.RETRY),
    (rpc_error(S.RESOURCE_EXHAUSTED), Verdict.RETRY),
    (asyncpg.exceptions.AdminShutdownError("x"), Verdict.RETRY),
    (ConnectionResetError(), Verdict.RETRY),
    # The job is gone from api.
    (rpc_error(S.NOT_FOUND), Verdict.GONE),
    # A request api refuses for good, outside a task's result, or a bug: bounded.
    (rpc_error(S.INVALID_ARGUMENT), Verdict.UNEXPECTED),
    (rpc_error(S.FAILED_PRECONDITION), Verdict.UNEXPECTED),
    (KeyError("x"), Verdict.UNEXPECTED),
    (ValueError("x"), Verdict.UNEXPECTED),
]


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_verdict(exc: BaseException, expected: Verdict) -> None:
    assert verdict(exc) is expected
