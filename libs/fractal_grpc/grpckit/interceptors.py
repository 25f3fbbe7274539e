"""Server interceptors, one per concern: errors and request logging here, auth in
``grpckit.auth``.

Each wraps the method handler's behaviour, for all four kinds of RPC, so the wrappers run inside
the RPC's own task and context variables set here are seen by the servicer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from fractal_grpc import logs
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
            "response_serializer": passing_encoded(handler.response_serializer),
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


class Encoded:
    """A response message already serialized, by a servicer that writes the bytes itself (an
    export of a million images in wire form, ``fractal_grpc.images.wire``): ``wire`` is sent
    as it is, where a message would be parsed from those bytes only for gRPC to serialize it
    again. The servicer answers for the bytes being a valid message of the method's response
    type."""

    __slots__ = ("wire",)

    def __init__(self, wire: bytes) -> None:
        self.wire = wire


def passing_encoded(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serializer``, letting :class:`Encoded` responses through unchanged (idempotent: the
    handler of each method is wrapped by every interceptor, the serializer once)."""
    if serializer is None or getattr(serializer, "passes_encoded", False):
        return serializer
    inner = serializer

    def serialize(message: Any) -> bytes:
        return message.wire if type(message) is Encoded else inner(message)

    serialize.passes_encoded = True  # type: ignore[attr-defined]
    return serialize


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


def final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, seen from an interceptor outside ``ErrorInterceptor``:
    the code it aborted with or set, OK when it returned, CANCELLED when it was cancelled."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as ``("pkg.Service", "Method")``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


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
        # Also on the call's own log line (LoggingInterceptor, outside this one).
        logs.bind(incident_id=incident)
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


#: Codes that say the server (or a dependency) failed, not the client: logged as warnings.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

REQUEST_ID_METADATA = "x-request-id"


def _request_ids(request: Any, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """The ids a call is about: the request id (``x-request-id`` metadata, else the request's
    ``request_id``) and the request's ``job_id``, when there are."""
    ids: dict[str, Any] = {}
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA:
            ids["request_id"] = value
    for field in ("request_id", "job_id"):
        if field in ids:
            continue
        try:
            value = getattr(request, field)
        except AttributeError:
            continue
        if isinstance(value, str | int) and value:
            ids[field] = value
    return ids


class LoggingInterceptor(_HandlerWrapper):
    """One log line per call, with the method, its status code and duration: DEBUG when it
    succeeded, INFO when it failed with a client's code, WARNING with a server fault (the
    ``SERVER_FAULTS``). The call's request id and job id are bound (``fractal_grpc.logs``) for
    every line logged while it runs. Placed outside ``ErrorInterceptor``, so it sees the code
    the client gets."""

    def _done(
        self, method: str, kind: str, start: float, code: grpc.StatusCode, details: str | None
    ) -> None:
        elapsed = (time.perf_counter() - start) * 1e3
        extra = {"grpc_method": method, "grpc_code": code.name, "duration_ms": round(elapsed, 1)}
        if code == grpc.StatusCode.OK:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s OK in %.1f ms", kind, method, elapsed, extra=extra)
            return
        level = logging.WARNING if code in SERVER_FAULTS else logging.INFO
        log.log(
            level,
            "%s %s failed: %s %s (%.1f ms)",
            kind,
            method,
            code.name,
            details or "",
            elapsed,
            extra=extra,
        )

    def _unary(self, method: str, inner: Unary, kind: str, reads_request: bool) -> Unary:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            ids = _request_ids(request if reads_request else None, context)
            with logs.log_context(**ids):
                try:
                    result = await inner(request, context)
                except BaseException as exc:
                    self._done(method, kind, start, final_code(context, exc), context.details())
                    raise
                self._done(method, kind, start, final_code(context, None), context.details())
                return result

        return run

    def _stream(self, method: str, inner: Stream, kind: str, reads_request: bool) -> Stream:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            ids = _request_ids(request if reads_request else None, context)
            with logs.log_context(**ids):
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    self._done(method, kind, start, final_code(context, exc), context.details())
                    raise
                self._done(method, kind, start, final_code(context, None), context.details())

        return run

    def around_unary(self, method: str, inner: Unary) -> Unary:
        return self._unary(method, inner, "unary", True)

    def around_stream(self, method: str, inner: Stream) -> Stream:
        return self._stream(method, inner, "server stream", True)

    def around_stream_unary(self, method: str, inner: Unary) -> Unary:
        return self._unary(method, inner, "client stream", False)

    def around_stream_stream(self, method: str, inner: Stream) -> Stream:
        return self._stream(method, inner, "bidi stream", False)
