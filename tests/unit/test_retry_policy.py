"""The internal clients' retry policy: which errors are retried, how long it waits, and that a
non-idempotent call is sent once."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
import tenacity
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from fractal_grpc.retry import RetryPolicy, _WaitAtLeastServerDelay, is_retryable

FAST = RetryPolicy(first_backoff=0.001, max_backoff=0.002)


def rpc_error(code: grpc.StatusCode, retry_delay: float | None = None) -> grpc.aio.AioRpcError:
    trailing: list[tuple[str, bytes]] = []
    if retry_delay is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(round(retry_delay * 1000))
        packed = any_pb2.Any()
        packed.Pack(info)
        status = status_pb2.Status(
            code=getattr(code_pb2, code.name), message="try later", details=[packed]
        )
        trailing.append(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="try later"
    )


S = grpc.StatusCode
CASES = [
    (rpc_error(S.UNAVAILABLE), True),
    (rpc_error(S.UNAVAILABLE, 1.0), True),
    (rpc_error(S.DEADLINE_EXCEEDED), True),
    (rpc_error(S.ABORTED, 0.1), True),
    (rpc_error(S.RESOURCE_EXHAUSTED, 2.0), True),
    (rpc_error(S.RESOURCE_EXHAUSTED), False),  # a limit, not a blip
    (rpc_error(S.INTERNAL), False),
    (rpc_error(S.UNKNOWN), False),
    (rpc_error(S.INVALID_ARGUMENT), False),
    (rpc_error(S.FAILED_PRECONDITION), False),
    (rpc_error(S.NOT_FOUND), False),
    (rpc_error(S.PERMISSION_DENIED), False),
    (ValueError("not an RPC error"), False),
]


@pytest.mark.parametrize(("exc", "retried"), CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_is_retryable(exc: BaseException, retried: bool) -> None:
    assert is_retryable(exc) is retried


class Flaky:
    """Fails with ``errors`` in turn, then answers "ok"; records each attempt's deadline."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.deadlines: list[float] = []

    async def __call__(self, deadline: float) -> str:
        self.deadlines.append(deadline)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retries_transient_errors_until_success() -> None:
    flaky = Flaky(
        rpc_error(S.UNAVAILABLE), rpc_error(S.DEADLINE_EXCEEDED), rpc_error(S.ABORTED, 0.001)
    )
    assert await FAST.call("t", flaky, idempotent=True, attempt_seconds=7.0) == "ok"
    assert flaky.deadlines == [7.0] * 4


async def test_a_permanent_error_is_raised_at_once() -> None:
    flaky = Flaky(rpc_error(S.UNAVAILABLE), rpc_error(S.INTERNAL))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await FAST.call("t", flaky, idempotent=True)
    assert err.value.code() == S.INTERNAL
    assert flaky.deadlines == [FAST.attempt_seconds] * 2


async def test_a_non_idempotent_call_is_sent_once() -> None:
    flaky = Flaky(rpc_error(S.UNAVAILABLE))
    with pytest.raises(grpc.aio.AioRpcError):
        await FAST.call("t", flaky, idempotent=False)
    assert len(flaky.deadlines) == 1


async def test_a_bounded_policy_raises_the_last_error() -> None:
    policy = RetryPolicy(first_backoff=0.001, max_backoff=0.002, total_seconds=0.0)
    flaky = Flaky(*[rpc_error(S.UNAVAILABLE)] * 3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await policy.call("t", flaky, idempotent=True)
    assert err.value.code() == S.UNAVAILABLE
    assert len(flaky.deadlines) == 1


async def test_an_unbounded_policy_ends_when_cancelled() -> None:
    flaky = Flaky(*[rpc_error(S.UNAVAILABLE)] * 10**6)
    call = asyncio.create_task(FAST.call("t", flaky, idempotent=True))
    while len(flaky.deadlines) < 5:
        await asyncio.sleep(0.001)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def state_after(exc: BaseException, attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(
        retry_object=tenacity.AsyncRetrying(), fn=None, args=(), kwargs={}
    )
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_wait_is_jittered_bounded_and_at_least_the_servers_delay() -> None:
    policy = RetryPolicy(first_backoff=0.1, max_backoff=2.0)
    wait = _WaitAtLeastServerDelay(policy)
    waits = [wait(state_after(rpc_error(S.UNAVAILABLE), 20)) for _ in range(200)]
    assert all(0 <= w <= 2.0 for w in waits)
    assert len(set(waits)) > 100  # jitter: not one fixed value
    hinted = [wait(state_after(rpc_error(S.UNAVAILABLE, 5.0), 1)) for _ in range(20)]
    assert all(w >= 5.0 for w in hinted)


def test_the_backoff_grows_to_its_bound() -> None:
    policy = RetryPolicy(first_backoff=0.1, max_backoff=2.0)
    assert max(policy.delay(1) for _ in range(200)) <= 0.1
    assert max(policy.delay(3) for _ in range(200)) <= 0.4
    assert max(policy.delay(10**6) for _ in range(200)) <= 2.0
    assert max(policy.delay(10**6) for _ in range(200)) > 1.0
