"""The one retry policy of internal gRPC clients (the runner's calls to api; later the
collector's): tenacity, exponential backoff with full jitter, a deadline per attempt, for
idempotent calls only.

Retried: UNAVAILABLE (the server or its database cannot be reached), DEADLINE_EXCEEDED (an
attempt ran out of its deadline), ABORTED (a conflict the server says may be run again), and
RESOURCE_EXHAUSTED when the server sent a ``google.rpc.RetryInfo`` (without one it is a limit,
not a blip). A ``RetryInfo`` delay, when given, is the least wait before the next attempt.
Everything else is raised at once as ``grpc.aio.AioRpcError``.

Without ``total_seconds`` a call is retried until it succeeds or its caller is cancelled: the
runner's calls belong to a run whose lease bounds them (a runner that loses the lease cancels
the execution), and an outage of api or PostgreSQL must not end a job. A client with nothing
like a lease sets ``total_seconds``; the last error is then raised.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
import tenacity
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["RETRYABLE_CODES", "RetryPolicy", "is_retryable", "server_retry_delay"]

log = logging.getLogger("fractal.retry")

T = TypeVar("T")

#: Retried whatever the details say.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)


def server_retry_delay(exc: grpc.aio.AioRpcError) -> float | None:
    """The delay of the error's ``RetryInfo`` detail, in seconds (None when it has none)."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details inconsistent with the status: ignore them
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(info.retry_delay.ToMilliseconds() / 1000, 0.0)
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether an idempotent call that failed with ``exc`` may be sent again."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    code = exc.code()
    if code in RETRYABLE_CODES:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and server_retry_delay(exc) is not None


class _WaitAtLeastServerDelay(tenacity.wait.wait_base):
    """The policy's jittered backoff, but never less than what the server asked for."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self.policy.delay(retry_state.attempt_number)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, grpc.aio.AioRpcError):
            hint = server_retry_delay(exc)
            if hint is not None:
                delay = max(delay, hint)
        return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How an internal client retries: backoff bounds, the deadline of one attempt, and the
    optional bound on the whole call."""

    #: Scale of the first backoff (see ``delay``).
    first_backoff: float = 0.1
    max_backoff: float = 10.0
    #: The deadline of one attempt (a unary call, or a whole stream), when the call gives none.
    attempt_seconds: float = 60.0
    #: None: until success or cancellation (see the module docstring).
    total_seconds: float | None = None

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1, 2, ...): uniform in
        [0, min(max_backoff, first_backoff * 2**(failures - 1))] ("full jitter", so that
        clients that failed together do not come back together). Also the backoff of retry
        loops that are not one RPC (the runner's execution attempts)."""
        ceiling = min(self.max_backoff, self.first_backoff * 2.0 ** min(max(failures - 1, 0), 60))
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not a secret

    async def call(
        self,
        what: str,
        attempt: Callable[[float], Awaitable[T]],
        *,
        idempotent: bool,
        attempt_seconds: float | None = None,
    ) -> T:
        """Run ``attempt(deadline_seconds)`` and retry it while its error is retryable.

        ``idempotent=False`` makes one attempt: a call that may have taken effect is never
        sent twice. ``what`` names the call in the log.
        """
        deadline = attempt_seconds if attempt_seconds is not None else self.attempt_seconds
        if not idempotent:
            return await attempt(deadline)
        stop: tenacity.stop.stop_base = (
            tenacity.stop_never
            if self.total_seconds is None
            else tenacity.stop_after_delay(self.total_seconds)
        )
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_retryable),
            wait=_WaitAtLeastServerDelay(self),
            stop=stop,
            reraise=True,
            before_sleep=lambda state: _log_retry(what, state),
        )
        return await retrying(attempt, deadline)


def _log_retry(what: str, state: tenacity.RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if isinstance(exc, grpc.aio.AioRpcError):
        reason = f"{exc.code().name}: {exc.details()}"
    else:
        reason = repr(exc)
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "%s: attempt %d failed (%s); retrying in %.2fs", what, state.attempt_number, reason, delay
    )
