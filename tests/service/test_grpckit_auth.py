"""The auth interceptor on every kind of RPC: unary, server-, client- and bidi-streaming methods
(generic handlers of a test service) are authenticated alike, a method missing from the table is
refused whatever its kind, the caller never leaks from one call into another, and a stream
closed in another context (as a finalised async generator is) logs nothing."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fractal_grpc.auth.principal import Access, Principal, PrincipalCache, current_principal
from fractal_grpc.auth.tokens import (
    INTERNAL_AUDIENCE,
    USER_AUDIENCE,
    Claims,
    ServiceTokenSource,
    TokenSigner,
    TokenVerifier,
)
from fractal_grpc.grpckit.auth import AuthInterceptor
from fractal_grpc.grpckit.interceptors import ErrorInterceptor, LoggingInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from helpers import error_details
from world import SESSION_TOKEN_SECONDS

Metadata = tuple[tuple[str, str], ...]


def _caller() -> bytes:
    return (current_principal().service or "anonymous").encode()


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"unary:" + _caller()


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(2):
        yield f"stream{i}:".encode() + _caller()


async def _client_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> bytes:
    received = [r async for r in requests]
    return b"+".join(received) + b":" + _caller()


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield b"echo:" + request + b":" + _caller()


def _identity(value: bytes) -> bytes:
    return value


KINDS = {
    "Unary": grpc.unary_unary_rpc_method_handler,
    "ServerStream": grpc.unary_stream_rpc_method_handler,
    "ClientStream": grpc.stream_unary_rpc_method_handler,
    "Bidi": grpc.stream_stream_rpc_method_handler,
}
BEHAVIOURS: dict[str, Any] = {
    "Unary": _unary,
    "ServerStream": _server_stream,
    "ClientStream": _client_stream,
    "Bidi": _bidi,
}


def _handlers() -> grpc.GenericRpcHandler:
    methods = {}
    for kind, make in KINDS.items():
        for prefix in ("Internal", "Public", "Unlisted"):
            methods[f"{prefix}{kind}"] = make(
                BEHAVIOURS[kind], request_deserializer=_identity, response_serializer=_identity
            )
    return grpc.method_handlers_generic_handler("test.AuthKit", methods)


@pytest.fixture(scope="module")
async def kit(key_env: dict[str, str]) -> AsyncIterator[grpc.aio.Channel]:
    public = Path(key_env["FRACTAL_SERVICE_PUBLIC_KEY_FILE"]).read_text()
    access = {
        **{f"/test.AuthKit/Internal{kind}": Access.INTERNAL for kind in KINDS},
        **{f"/test.AuthKit/Public{kind}": Access.PUBLIC for kind in KINDS},
    }
    auth = AuthInterceptor(
        access, internal_verifier=TokenVerifier(public, audience=INTERNAL_AUDIENCE)
    )
    server = GrpcServer("127.0.0.1:0", [ErrorInterceptor(), LoggingInterceptor(), auth])
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0.1)


@pytest.fixture(scope="module")
def service_token(key_env: dict[str, str]) -> Metadata:
    key = Path(key_env["FRACTAL_SERVICE_PRIVATE_KEY_FILE"]).read_text()
    return ServiceTokenSource(key, service="kit-test", lifetime=SESSION_TOKEN_SECONDS).metadata()


async def call(
    channel: grpc.aio.Channel, method: str, metadata: Metadata = (), *, send: bool = True
) -> list[bytes]:
    """Call ``/test.AuthKit/<method>`` the way its kind wants; returns every response.

    ``send=False`` sends no request on a client-streaming call, for calls refused before any
    request is read: a request written while the refusal arrives fails on the client's side
    (grpc reports that failed write as INTERNAL), which says nothing about the server."""
    path = f"/test.AuthKit/{method}"
    if method.endswith("ServerStream"):
        return [r async for r in channel.unary_stream(path)(b"x", metadata=metadata)]
    if method.endswith("Unary") and not method.endswith("ClientStream"):
        return [await channel.unary_unary(path)(b"x", metadata=metadata)]
    streaming: Any = (
        channel.stream_stream(path) if method.endswith("Bidi") else channel.stream_unary(path)
    )
    stream = streaming(metadata=metadata)
    if send:
        for request in (b"a", b"b"):
            await stream.write(request)
        await stream.done_writing()
    if method.endswith("ClientStream"):
        return [await stream]
    responses = []
    while (response := await stream.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_kind_of_internal_method_needs_a_service_token(
    kit: grpc.aio.Channel, service_token: Metadata, kind: str
) -> None:
    for metadata in [(), (("authorization", "Bearer garbage"),), (("authorization", "Basic x"),)]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(kit, f"Internal{kind}", metadata, send=False)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (kind, metadata)
        info, _ = error_details(err.value)
        assert info is not None and info.reason in {"MISSING_TOKEN", "INVALID_TOKEN"}
    responses = await call(kit, f"Internal{kind}", service_token)
    assert responses and all(r.endswith(b":service:kit-test") for r in responses), responses


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_kind_of_method_missing_from_the_table_is_refused(
    kit: grpc.aio.Channel, service_token: Metadata, kind: str
) -> None:
    for metadata in [(), service_token]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(kit, f"Unlisted{kind}", metadata, send=False)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info, _ = error_details(err.value)
        assert info is not None and info.reason == "METHOD_NOT_ALLOWED"


async def test_public_methods_of_every_kind_answer_without_a_token(kit: grpc.aio.Channel) -> None:
    assert await call(kit, "PublicUnary") == [b"unary:anonymous"]
    assert await call(kit, "PublicServerStream") == [b"stream0:anonymous", b"stream1:anonymous"]
    assert await call(kit, "PublicClientStream") == [b"a+b:anonymous"]
    assert await call(kit, "PublicBidi") == [b"echo:a:anonymous", b"echo:b:anonymous"]


async def test_the_caller_does_not_outlive_its_call(
    kit: grpc.aio.Channel, service_token: Metadata
) -> None:
    """Each RPC runs in a task of its own: a principal set for one call is not seen by the next
    (which is why the interceptor never resets it)."""
    for kind in KINDS:
        await call(kit, f"Internal{kind}", service_token)
        assert all(r.endswith(b":anonymous") for r in await call(kit, f"Public{kind}"))


async def test_health_watch_passes_the_interceptors(kit: grpc.aio.Channel) -> None:
    """Health's Watch writes with ``context.write`` instead of yielding: still served."""
    stream = health_pb2_grpc.HealthStub(kit).Watch(health_pb2.HealthCheckRequest(service=""))
    first = await stream.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


async def test_a_stream_finalised_in_another_context_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a client closing a stream after its last message leads to: the wrapped generator is
    closed later, by the event loop, outside the context of its call. Nothing fails then."""
    auth = AuthInterceptor(
        {"/t.S/Watch": Access.INTERNAL},
        internal_verifier=_AcceptsTestToken(),  # type: ignore[arg-type]
    )

    async def watch(request: Any, context: Any) -> AsyncIterator[bytes]:
        yield b"last"
        await asyncio.sleep(3600)

    class Context:
        def invocation_metadata(self) -> Metadata:
            return (("authorization", "Bearer t"),)

    stream = auth.around_stream("/t.S/Watch", watch)(b"", Context())  # type: ignore[arg-type]
    call_context = contextvars.copy_context()
    first = await asyncio.get_running_loop().create_task(anext(stream), context=call_context)
    assert first == b"last"
    assert call_context.run(current_principal).service == "service:runner"
    caplog.set_level(logging.DEBUG)
    await asyncio.get_running_loop().create_task(
        stream.aclose(),  # type: ignore[attr-defined]
        context=contextvars.copy_context(),
    )
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


class _AcceptsTestToken:
    """A service-token verifier that accepts the one token of the test (no keys needed)."""

    def verify(self, token: str) -> Claims:
        assert token == "t"
        return Claims(subject="service:runner", audience=INTERNAL_AUDIENCE, expires_at=2**40)


@pytest.fixture(scope="module")
async def user_kit(
    key_env: dict[str, str],
) -> AsyncIterator[tuple[grpc.aio.Channel, dict[int, Principal], PrincipalCache]]:
    """The test service with user methods of every kind; users live in ``users`` (what the api
    loads from its database), loaded through a PrincipalCache as api does."""
    users: dict[int, Principal] = {}

    async def load(user_id: int) -> Principal | None:
        return users.get(user_id)

    cache = PrincipalCache(load, ttl=3600)  # only a change event or nothing: no expiry

    async def load_user(subject: str) -> Principal | None:
        return await cache.get(int(subject))

    public = Path(key_env["FRACTAL_SERVICE_PUBLIC_KEY_FILE"]).read_text()
    user_public = Path(key_env["FRACTAL_JWT_PUBLIC_KEY_FILE"]).read_text()
    auth = AuthInterceptor(
        {f"/test.AuthKit/Internal{kind}": Access.USER for kind in KINDS},
        internal_verifier=TokenVerifier(public, audience=INTERNAL_AUDIENCE),
        user_verifier=TokenVerifier(user_public, audience=USER_AUDIENCE),
        load_user=load_user,
        user_changes=cache.watch,
        recheck_seconds=3600,  # so that only the change event can end the calls below
    )
    server = GrpcServer("127.0.0.1:0", [ErrorInterceptor(), auth])
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, users, cache
    await server.stop(0.1)


@pytest.mark.parametrize("kind", ["ClientStream", "Bidi"])
async def test_open_client_and_bidi_streams_end_when_their_user_is_deactivated(
    user_kit: tuple[grpc.aio.Channel, dict[int, Principal], PrincipalCache],
    key_env: dict[str, str],
    kind: str,
) -> None:
    channel, users, cache = user_kit
    user_id = len(users) + 1
    users[user_id] = Principal(user_id=user_id, email=f"u{user_id}@x.y")
    signer = TokenSigner(
        Path(key_env["FRACTAL_JWT_PRIVATE_KEY_FILE"]).read_text(),
        issuer="test",
        audience=USER_AUDIENCE,
        lifetime=600,
    )
    token, _ = signer.sign(str(user_id))
    path = f"/test.AuthKit/Internal{kind}"
    metadata = (("authorization", f"Bearer {token}"),)
    stream: Any = (channel.stream_stream(path) if kind == "Bidi" else channel.stream_unary(path))(
        metadata=metadata
    )
    await stream.write(b"a")
    if kind == "Bidi":
        assert await stream.read() == b"echo:a:anonymous"  # a user, not a service
    users[user_id] = Principal(user_id=user_id, email=f"u{user_id}@x.y", is_active=False)
    cache.forget(user_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stream.read() if kind == "Bidi" else stream, 30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
