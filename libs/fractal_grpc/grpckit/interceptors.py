"""Server interceptors, one per concern: errors and request logging here, auth in
``grpckit.auth``.

Each wraps the method handler's behaviour, for all four kinds of RPC, so the wrappers run inside
the RPC's own task and context variables set here are seen by the servicer.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from fractal_grpc.grpckit.errors import DomainError
from fractal_grpc.grpckit.transient import describe, transient_error

log = logging.getLogger("fractal.grpc")

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class _HandlerWrapper(grpc.aio.ServerInterceptor):
    """Base: subclasses define ``around_*`` hooks for one method, one per kind of RPC.

    ``around_unary`` and ``around_stream`` wrap methods with a single request (unary-unary and
    unary-stream). ``around_stream_unary`` and ``around_stream_stream`` wrap client-streaming
    and bidi methods, whose first argument is the iterator of requests; by default they reuse
    ``around_unary`` and ``around_stream`` (right for wrappers that do not read the request).
    Every method handler is wrapped, whatever its kind: nothing passes an interceptor by
    being of a kind it forgot. Stream handlers written in the ``context.write`` style are turned
    into (empty) async iterators first, so stream hooks always see an iterator.

    The wrapped handler of each method is built once and reused; per call only a lookup runs.
    Wrappers read per-call data (metadata) from the call's context.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.around_unary(method, handler.unary_unary), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.around_stream(method, _iterating(handler.unary_stream)), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self.around_stream_unary(method, handler.stream_unary), **serializers
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self.around_stream_stream(method, _iterating(handler.stream_stream)),
                **serializers,
            )
        raise TypeError(f"method handler of {method} has no behaviour")

    def around_unary(self, method: str, inner: Unary) -> Unary:
        return inner

    def around_stream(self, method: str, inner: Stream) -> Stream:
        return inner

    def around_stream_unary(self, method: str, inner: Unary) -> Unary:
        return self.around_unary(method, inner)

    def around_stream_stream(self, method: str, inner: Stream) -> Stream:
        return self.around_stream(method, inner)


def _iterating(behaviour: Callable[[Any, grpc.aio.ServicerContext], Any]) -> Stream:
    """A stream behaviour as an async iterator, also when it is a coroutine that sends its
    responses with ``context.write`` (as the health service's Watch does)."""
    if inspect.isasyncgenfunction(behaviour):
        return behaviour

    async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = behaviour(request, context)
        if inspect.isawaitable(result):
            await result
            return
        async for item in result:
            yield item

    return run


async def _abort(context: grpc.aio.ServicerContext, error: DomainError) -> None:
    status = error.to_status()
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


class ErrorInterceptor(_HandlerWrapper):
    """Maps domain errors to their status with details, and a dependency that blinked to
    UNAVAILABLE / ABORTED with ``RetryInfo`` (``transient_error``); anything else becomes
    INTERNAL with an incident id (logged with its traceback, never sent to the client)."""

    async def _handle(self, method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, DomainError):
            await _abort(context, exc)
        retryable = transient_error(exc)
        if retryable is not None:
            log.warning("%s: %s (%s)", method, retryable.message, describe(exc))
            await _abort(context, retryable)
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error in %s (incident %s)", method, incident)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")

    def around_unary(self, method: str, inner: Unary) -> Unary:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                await self._handle(method, exc, context)

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._handle(method, exc, context)

        return run


class LoggingInterceptor(_HandlerWrapper):
    """One log line per call: method, outcome and duration (DEBUG for success)."""

    def around_unary(self, method: str, inner: Unary) -> Unary:
        if not log.isEnabledFor(logging.INFO):
            return inner

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                result = await inner(request, context)
            except BaseException:
                log.info("%s failed after %.1f ms", method, (time.perf_counter() - start) * 1e3)
                raise
            log.debug("%s ok in %.1f ms", method, (time.perf_counter() - start) * 1e3)
            return result

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            count = 0
            try:
                async for item in inner(request, context):
                    count += 1
                    yield item
            finally:
                log.debug(
                    "%s streamed %d messages in %.1f ms",
                    method,
                    count,
                    (time.perf_counter() - start) * 1e3,
                )

        return run
