"""Server interceptors, one per concern: errors, auth, request logging.

Each wraps the method handler's behaviour (unary-unary and unary-stream), so the wrappers run
inside the RPC's own task and context variables set here are seen by the servicer.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from fractal_grpc.auth.principal import Access, Principal, reset_principal, set_principal
from fractal_grpc.auth.tokens import InvalidToken, TokenVerifier
from fractal_grpc.grpckit.errors import DomainError, PermissionDenied, Unauthenticated

log = logging.getLogger("fractal.grpc")

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class _HandlerWrapper(grpc.aio.ServerInterceptor):
    """Base: subclasses define ``around_unary`` and ``around_stream`` for one method.

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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.around_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # A stream handler that writes with context.write (a coroutine, like grpc's health Watch)
        # is left as it is: the wrappers iterate async generators.
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                self.around_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def around_unary(self, method: str, inner: Unary) -> Unary:
        return inner

    def around_stream(self, method: str, inner: Stream) -> Stream:
        return inner


async def _abort(context: grpc.aio.ServicerContext, error: DomainError) -> None:
    status = error.to_status()
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


class ErrorInterceptor(_HandlerWrapper):
    """Maps domain errors to their status with details; anything unexpected becomes INTERNAL
    with an incident id (logged with its traceback, never sent to the client)."""

    async def _handle(self, method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, DomainError):
            await _abort(context, exc)
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


PrincipalLoader = Callable[[str], Awaitable[Principal | None]]

# Methods every service answers without a token.
_ALWAYS_PUBLIC = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(_HandlerWrapper):
    """Authenticates the bearer token and enforces the per-method ``Access`` table.

    User tokens are verified with the user key and audience; the subject is loaded through
    ``load_user`` (so deactivation and flag changes take effect at once). Internal methods accept
    only service tokens. A method missing from the table is refused: nothing is open by accident.
    """

    def __init__(
        self,
        access: Mapping[str, Access],
        *,
        internal_verifier: TokenVerifier,
        user_verifier: TokenVerifier | None = None,
        load_user: PrincipalLoader | None = None,
    ) -> None:
        super().__init__()
        self.access = dict(access)
        self.user_verifier = user_verifier
        self.internal_verifier = internal_verifier
        self.load_user = load_user

    async def authenticate(self, method: str, metadata: Mapping[str, Any]) -> Principal | None:
        if method.startswith(_ALWAYS_PUBLIC):
            return None
        required = self.access.get(method)
        if required is None:
            raise PermissionDenied(f"method {method} is not available", reason="METHOD_NOT_ALLOWED")
        if required is Access.PUBLIC:
            return None
        token = _bearer(metadata)
        if required is Access.INTERNAL:
            try:
                claims = self.internal_verifier.verify(token)
            except InvalidToken as exc:
                raise PermissionDenied(
                    f"internal method needs a service token: {exc}", reason="SERVICE_TOKEN_REQUIRED"
                ) from None
            return Principal(service=claims.subject)
        if self.user_verifier is None or self.load_user is None:
            raise PermissionDenied(f"method {method} is not available", reason="METHOD_NOT_ALLOWED")
        try:
            claims = self.user_verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthenticated(str(exc), reason="INVALID_TOKEN") from None
        principal = await self.load_user(claims.subject)
        if principal is None or not principal.is_active:
            raise Unauthenticated("user not found or inactive", reason="INVALID_TOKEN")
        if required is Access.VERIFIED and not (principal.is_verified or principal.is_superuser):
            raise PermissionDenied("this needs a verified user", reason="USER_NOT_VERIFIED")
        if required is Access.SUPERUSER and not principal.is_superuser:
            raise PermissionDenied("this needs a superuser", reason="SUPERUSER_REQUIRED")
        return principal

    def around_unary(self, method: str, inner: Unary) -> Unary:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = await self.authenticate(method, _metadata(context))
            if principal is None:
                return await inner(request, context)
            token = set_principal(principal)
            try:
                return await inner(request, context)
            finally:
                reset_principal(token)

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            principal = await self.authenticate(method, _metadata(context))
            token = set_principal(principal) if principal is not None else None
            try:
                async for item in inner(request, context):
                    yield item
            finally:
                if token is not None:
                    reset_principal(token)

        return run


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return dict(context.invocation_metadata() or ())


def _bearer(metadata: Mapping[str, Any]) -> str:
    value = metadata.get("authorization")
    if not value:
        raise Unauthenticated("missing authorization metadata", reason="MISSING_TOKEN")
    if isinstance(value, bytes):
        value = value.decode()
    scheme, _, token = str(value).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="MISSING_TOKEN")
    return token.strip()


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
