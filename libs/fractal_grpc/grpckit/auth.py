"""The auth interceptor: who is calling, and may they call this method, for every kind of RPC.

One table of codes (README "Errors"):

- no token, a malformed ``authorization`` header, a token that does not verify (forged, other
  key, ``alg=none``, HMAC, expired, unknown audience), whose user is gone or inactive, or that
  was issued before the user's password changed: UNAUTHENTICATED;
- a valid token that is not allowed here (a user token on an internal method, a service token
  on a user method, an unverified user where verification is needed, a non-superuser on a
  superuser method, a method missing from the table): PERMISSION_DENIED.

Calls that stay open (server-, client- and bidi-streaming) re-check their user every
``recheck_seconds`` and whenever the user changes (``user_changes``), and end at the token's
expiry: a deactivated user or an expired token ends the call with UNAUTHENTICATED (or
PERMISSION_DENIED when the user lost the right the method needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import grpc.aio

from fractal_grpc.auth.principal import Access, Principal, set_principal
from fractal_grpc.auth.tokens import Claims, InvalidToken, TokenVerifier
from fractal_grpc.grpckit.errors import DomainError, PermissionDenied, Unauthenticated
from fractal_grpc.grpckit.interceptors import Stream, Unary, _HandlerWrapper

log = logging.getLogger("fractal.grpc.auth")

PrincipalLoader = Callable[[str], Awaitable[Principal | None]]
# Subscribes to changes of one user: an event set on each change, for as long as it is entered.
UserChanges = Callable[[int], AbstractContextManager[asyncio.Event]]

# Methods every service answers without a token.
_ALWAYS_PUBLIC = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# How often an open call re-checks its user even without a change event.
RECHECK_SECONDS = 2.0


class _Caller(NamedTuple):  # a tuple: built on every call, so cheap to build
    required: Access
    principal: Principal | None = None
    claims: Claims | None = None

    @property
    def is_user(self) -> bool:
        return self.principal is not None and self.principal.user_id is not None


class AuthInterceptor(_HandlerWrapper):
    """Authenticates the bearer token and enforces the per-method ``Access`` table.

    User tokens are verified with the user key and audience; the subject is loaded through
    ``load_user`` (so deactivation and flag changes take effect at once). Internal methods accept
    only service tokens. A method missing from the table is refused, whatever its kind: nothing
    is open by accident.
    """

    def __init__(
        self,
        access: Mapping[str, Access],
        *,
        internal_verifier: TokenVerifier,
        user_verifier: TokenVerifier | None = None,
        load_user: PrincipalLoader | None = None,
        user_changes: UserChanges | None = None,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        super().__init__()
        self.access = dict(access)
        self.user_verifier = user_verifier
        self.internal_verifier = internal_verifier
        self.load_user = load_user
        self.user_changes = user_changes
        self.recheck_seconds = recheck_seconds

    async def authenticate(self, method: str, metadata: Mapping[str, Any]) -> Principal | None:
        """The caller of ``method`` (None for public methods); raises a DomainError."""
        return (await self._caller(method, metadata)).principal

    async def _caller(self, method: str, metadata: Mapping[str, Any]) -> _Caller:
        if method.startswith(_ALWAYS_PUBLIC):
            return _Caller(Access.PUBLIC)
        required = self.access.get(method)
        if required is None:
            raise PermissionDenied(f"method {method} is not available", reason="METHOD_NOT_ALLOWED")
        if required is Access.PUBLIC:
            return _Caller(required)
        token = _bearer(metadata)
        if required is Access.INTERNAL:
            try:
                claims = self.internal_verifier.verify(token)
            except InvalidToken as exc:
                if _verifies(self.user_verifier, token):
                    raise PermissionDenied(
                        "this method accepts only service tokens", reason="SERVICE_TOKEN_REQUIRED"
                    ) from None
                raise Unauthenticated(str(exc), reason=exc.reason) from None
            return _Caller(required, Principal(service=claims.subject), claims)
        if self.user_verifier is None or self.load_user is None:
            raise PermissionDenied(f"method {method} is not available", reason="METHOD_NOT_ALLOWED")
        try:
            claims = self.user_verifier.verify(token)
        except InvalidToken as exc:
            if _verifies(self.internal_verifier, token):
                raise PermissionDenied(
                    "this method needs a user token", reason="USER_TOKEN_REQUIRED"
                ) from None
            raise Unauthenticated(str(exc), reason=exc.reason) from None
        principal = await self._user(required, claims)
        return _Caller(required, principal, claims)

    async def _user(self, required: Access, claims: Claims) -> Principal:
        """The active user of ``claims``, allowed what ``required`` asks."""
        assert self.load_user is not None
        principal = await self.load_user(claims.subject)
        if principal is None or not principal.is_active:
            raise Unauthenticated("user not found or inactive", reason="INVALID_TOKEN")
        if claims.generation != principal.token_generation:
            raise Unauthenticated(
                "token issued before the user's password changed; log in again",
                reason="TOKEN_REVOKED",
            )
        # As the reference's verified-user dependency: superusers are no exception.
        if required is Access.VERIFIED and not principal.is_verified:
            raise PermissionDenied("this needs a verified user", reason="USER_NOT_VERIFIED")
        if required is Access.SUPERUSER and not principal.is_superuser:
            raise PermissionDenied("this needs a superuser", reason="SUPERUSER_REQUIRED")
        return principal

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> _Caller:
        caller = await self._caller(method, _metadata(context))
        if caller.principal is not None:
            set_principal(caller.principal)
        return caller

    def around_unary(self, method: str, inner: Unary) -> Unary:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._enter(method, context)
            return await inner(request, context)

        return run

    def around_stream_unary(self, method: str, inner: Unary) -> Unary:
        async def run(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._enter(method, context)
            if not caller.is_user:
                return await inner(requests, context)
            revoked = asyncio.ensure_future(self._revocation(caller))
            call = asyncio.ensure_future(inner(requests, context))
            try:
                return await _unless_revoked(call, revoked)
            finally:
                await _cancelled(call)
                await _cancelled(revoked)

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            caller = await self._enter(method, context)
            items = inner(request, context)
            if not caller.is_user:
                async for item in items:
                    yield item
                return
            revoked = asyncio.ensure_future(self._revocation(caller))
            step: asyncio.Future[Any] | None = None
            try:
                while True:
                    step = asyncio.ensure_future(anext(items))
                    try:
                        item = await _unless_revoked(step, revoked)
                    except StopAsyncIteration:
                        return
                    step = None
                    yield item
            finally:
                if step is not None:
                    await _cancelled(step)
                await _cancelled(revoked)
                await items.aclose()  # type: ignore[attr-defined]

        return run

    def around_stream_stream(self, method: str, inner: Stream) -> Stream:
        return self.around_stream(method, inner)

    async def _revocation(self, caller: _Caller) -> DomainError:
        """Waits until the caller may no longer hold the call open; returns why."""
        assert caller.principal is not None and caller.claims is not None
        user_id = caller.principal.user_id
        assert user_id is not None
        watching = self.user_changes(user_id) if self.user_changes else contextlib.nullcontext(None)
        with watching as changed:
            while True:
                # First once right after subscribing: a change made between the call's
                # authentication and the subscription is not missed (usually a cache hit).
                try:
                    await self._user(caller.required, caller.claims)
                except DomainError as exc:
                    return exc
                except Exception:  # noqa: BLE001 - a lookup that failed is tried again
                    log.warning("re-check of user %s failed; trying again", user_id, exc_info=True)
                remaining = caller.claims.expires_at - time.time()
                if remaining <= 0:
                    return Unauthenticated("token expired", reason="TOKEN_EXPIRED")
                await _wait(changed, min(self.recheck_seconds, remaining))


async def _unless_revoked(work: asyncio.Future[Any], revoked: asyncio.Future[DomainError]) -> Any:
    """The result of ``work``, unless the caller's right to the call ends first: then the
    DomainError saying why is raised (cancelling ``work`` is left to the caller)."""
    if not revoked.done():
        await asyncio.wait((work, revoked), return_when=asyncio.FIRST_COMPLETED)
    if revoked.done():
        raise revoked.result()
    return work.result()


async def _wait(changed: asyncio.Event | None, seconds: float) -> None:
    """Until ``changed`` is set (then cleared) or ``seconds`` pass."""
    if changed is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(changed.wait(), seconds)
    changed.clear()


async def _cancelled(future: asyncio.Future[Any]) -> None:
    """Cancel ``future`` and wait until it is done (its clean-up has run)."""
    if not future.done():
        future.cancel()
    with contextlib.suppress(BaseException):
        await future


def _verifies(verifier: TokenVerifier | None, token: str) -> bool:
    if verifier is None:
        return False
    try:
        verifier.verify(token)
    except InvalidToken:
        return False
    return True


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return dict(context.invocation_metadata() or ())


def _bearer(metadata: Mapping[str, Any]) -> str:
    value = metadata.get("authorization")
    if not value:
        raise Unauthenticated("missing authorization metadata", reason="MISSING_TOKEN")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    scheme, _, token = str(value).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="MISSING_TOKEN")
    return token.strip()
