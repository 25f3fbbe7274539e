"""``BaseClient``: the plumbing of ``Client`` (channel, token, deadlines, errors), shared by
the modules that hold its methods (``api.py``, ``admin.py``, ``task_collections.py``).

Every call has a deadline (``timeout`` per call, else the client's default), carries the
caller's token, and raises a ``FractalError`` subclass with the status code and details. Retries
are gRPC's, from the one service config (``channel.py``): reads and request_id creates on
UNAVAILABLE, nothing else. Creates that take a ``request_id`` always send one (a fresh one when
the caller gives none), so that a create retried by gRPC (or by the caller, with the same key)
is answered with the first result instead of a second object.

With a ``Credential`` the client logs in by itself, and logs in again when its token is about
to expire or the server says it has expired.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2, message, struct_pb2

from fractal.v2 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    image_pb2,
)
from fractal_grpc.client.channel import open_channel
from fractal_grpc.client.errors import FractalError, from_rpc_error
from fractal_grpc.convert import fill_filters, fill_image

R = TypeVar("R")

#: The default deadline of a unary call, in seconds.
DEFAULT_TIMEOUT = 30.0
#: Streams that move data (downloads, exports, imports) get longer.
TRANSFER_TIMEOUT = 3600.0
#: A watch follows a job for as long as it runs (it is resumed after a lost connection).
WATCH_TIMEOUT = 7 * 24 * 3600.0
#: Log in again this long before the token expires.
REFRESH_MARGIN_SECONDS = 30.0
#: A watch whose connection drops is reopened for this long before giving up.
WATCH_RESUME_SECONDS = 120.0
#: Reconnect quickly after an outage (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

ImageLike = image_pb2.Image | Mapping[str, Any]
FiltersLike = image_pb2.Filters | Mapping[str, Any]
StructLike = struct_pb2.Struct | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Credential:
    """What the client logs in with, again whenever its token runs out."""

    email: str
    password: str


def _struct(target: struct_pb2.Struct, value: StructLike | None) -> None:
    if value is None:
        return
    if isinstance(value, struct_pb2.Struct):
        target.CopyFrom(value)
    else:
        target.update(dict(value))


def _filters(target: image_pb2.Filters, value: FiltersLike | None) -> None:
    if value is None:
        return
    if isinstance(value, image_pb2.Filters):
        target.CopyFrom(value)
    else:
        fill_filters(target, value)


def _images(images: Iterable[ImageLike]) -> list[image_pb2.Image]:
    out = []
    for item in images:
        if isinstance(item, image_pb2.Image):
            out.append(item)
        else:
            img = image_pb2.Image()
            fill_image(img, item)
            out.append(img)
    return out


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def new_request_id() -> str:
    return uuid.uuid4().hex


class BaseClient:
    """The public API of one api server, as the user with ``token`` (or ``credential``)."""

    def __init__(
        self,
        address: str,
        token: str = "",
        *,
        credential: Credential | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_token: Callable[[str], None] | None = None,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.address = address
        self.token = token
        self.credential = credential
        self.timeout = timeout
        #: Called with every new token (the CLI caches it).
        self.on_token = on_token
        self._interceptors = interceptors
        self._max_message_bytes = max_message_bytes
        self._expires_at: float | None = None
        self._channel: grpc.aio.Channel | None = None
        self._login_lock: asyncio.Lock | None = None

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, opened on first use (inside the running event loop)."""
        if self._channel is None:
            kwargs: dict[str, Any] = {}
            if self._max_message_bytes is not None:
                kwargs["max_message_bytes"] = self._max_message_bytes
            self._channel = open_channel(
                self.address, CHANNEL_OPTIONS, interceptors=self._interceptors, **kwargs
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def login(self, email: str | None = None, password: str | None = None) -> str:
        """Log in (with the given email and password, which become the client's credential,
        or with the saved credential) and keep the token; returns it."""
        if email is not None and password is not None:
            self.credential = Credential(email, password)
        if self.credential is None:
            raise ValueError("login needs an email and a password, or a saved credential")
        stub = auth_service_pb2_grpc.AuthServiceStub(self.channel)
        try:
            resp = await stub.Login(
                auth_service_pb2.LoginRequest(
                    email=self.credential.email, password=self.credential.password
                ),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "/fractal.v2.AuthService/Login") from None
        self.token = resp.access_token
        self._expires_at = time.monotonic() + resp.expires_in if resp.expires_in > 0 else None
        if self.on_token is not None:
            self.on_token(self.token)
        return self.token

    async def _refresh(self, stale: str | None) -> None:
        """Log in again unless another call already replaced the ``stale`` token."""
        if self._login_lock is None:
            self._login_lock = asyncio.Lock()
        async with self._login_lock:
            if stale is None or self.token == stale:
                await self.login()

    async def _ensure_token(self) -> None:
        if self.credential is None:
            return
        if not self.token or (
            self._expires_at is not None
            and time.monotonic() > self._expires_at - REFRESH_MARGIN_SECONDS
        ):
            await self._refresh(self.token or None)

    def _may_refresh(self, error: FractalError) -> bool:
        return (
            self.credential is not None
            and error.code == grpc.StatusCode.UNAUTHENTICATED
            and error.reason in ("TOKEN_EXPIRED", "INVALID_TOKEN", "MISSING_TOKEN")
        )

    async def _unary(
        self,
        method: Callable[..., Awaitable[R]],
        name: str,
        request: message.Message,
        timeout: float | None,
    ) -> R:
        await self._ensure_token()
        for attempt in (1, 2):
            token = self.token
            try:
                return await method(
                    request, metadata=self._metadata(), timeout=timeout or self.timeout
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc, name)
                if attempt == 1 and self._may_refresh(error):
                    await self._refresh(token)
                    continue
                raise error from None
        raise AssertionError("unreachable")

    async def _stream(
        self,
        method: Callable[..., Any],
        name: str,
        request: message.Message,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        """The responses of a server stream; a refused token is refreshed before the first."""
        await self._ensure_token()
        for attempt in (1, 2):
            token = self.token
            call = method(request, metadata=self._metadata(), timeout=timeout)
            received = False
            try:
                async for resp in call:
                    received = True
                    yield resp
                return
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc, name)
                if attempt == 1 and not received and self._may_refresh(error):
                    await self._refresh(token)
                    continue
                raise error from None
            finally:
                call.cancel()

    async def _reopened(
        self,
        method: Callable[..., Any],
        name: str,
        request: message.Message,
        timeout: float | None,
        resume_seconds: float,
    ) -> AsyncIterator[tuple[bool, Any]]:
        """A watch stream's responses, each with whether it is the first of its connection: a
        watch is a read, so when its connection is lost (UNAVAILABLE, e.g. api restarted) it
        is opened again, for up to ``resume_seconds`` without an answer."""
        lost_since: float | None = None
        while True:
            first = True
            try:
                async for resp in self._stream(method, name, request, timeout):
                    lost_since = None
                    yield first, resp
                    first = False
                return
            except FractalError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > resume_seconds:
                    raise
                await asyncio.sleep(0.5)
