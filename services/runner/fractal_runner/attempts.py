"""What an execution attempt that raised means for its job: try again, or give up.

A job ends FAILED only for its own fault — a task error, an invalid output, a permanent
refusal of its result by api (those are decided inside ``JobExecution`` and reported with
FinishJob) — or a stop. What reaches the scheduler is the rest:

- ``Verdict.RETRY``: api or the path to it failed (any RPC error but the ones below: api down
  for longer than a call's own retries, INTERNAL, UNKNOWN, a refused service token, ...), or a
  dependency blinked. Nothing about the job is wrong: the scheduler waits (jittered exponential
  backoff, bounded) and runs the attempt again, for as long as it holds the run's lease. With
  per-call resume the next attempt re-runs no call that had completed.
- ``Verdict.GONE``: api no longer knows the job (NOT_FOUND): nothing to finish.
- ``Verdict.UNEXPECTED``: a bug (of the runner, or a permanent refusal of a request that is
  not a task's result): retried a few times, then the job is given up FAILED with the
  reference's "UNKNOWN ERROR" text.
"""

from __future__ import annotations

import enum

import grpc
import grpc.aio

from fractal_grpc.grpckit.transient import transient_error
from fractal_grpc.retry import RetryPolicy

__all__ = [
    "ATTEMPT_BACKOFF",
    "BOOKKEEPING_BACKOFF",
    "MAX_UNEXPECTED_ATTEMPTS",
    "Verdict",
    "verdict",
]

#: Attempts that end in an unexpected error before the job is given up.
MAX_UNEXPECTED_ATTEMPTS = 5
#: The pause between two attempts of one execution (after the n-th failure in a row).
ATTEMPT_BACKOFF = RetryPolicy(first_backoff=1.0, max_backoff=30.0)
#: The pause before trying again when the runner's own database writes fail.
BOOKKEEPING_BACKOFF = RetryPolicy(first_backoff=1.0, max_backoff=10.0)

# Permanent refusals of a request: the runner sent something api will never accept.
_REFUSALS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


class Verdict(enum.Enum):
    RETRY = "retry"
    GONE = "gone"
    UNEXPECTED = "unexpected"


def verdict(exc: BaseException) -> Verdict:
    """What an attempt that raised ``exc`` (not a cancellation) means for its job."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return Verdict.GONE
        if code in _REFUSALS:
            return Verdict.UNEXPECTED
        return Verdict.RETRY
    if transient_error(exc) is not None:
        return Verdict.RETRY
    return Verdict.UNEXPECTED
