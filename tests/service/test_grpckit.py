"""The server kit: domain errors become statuses with details, surprises become INTERNAL without
a traceback, unknown methods are refused, health and reflection answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fractal_grpc.auth.principal import Access
from fractal_grpc.auth.tokens import INTERNAL_AUDIENCE, TokenVerifier
from fractal_grpc.grpckit.auth import AuthInterceptor
from fractal_grpc.grpckit.errors import InvalidArgument, NotFound
from fractal_grpc.grpckit.interceptors import ErrorInterceptor, LoggingInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from helpers import error_details


async def _bad_input(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise InvalidArgument("name: must not be empty", violations=[("name", "must not be empty")])


async def _missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFound("Thing 7 not found")


async def _bug(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise ZeroDivisionError("secret internals")


async def _slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    import asyncio

    await asyncio.sleep(0.5)
    return b"done:" + request


async def _stream_bug(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise InvalidArgument("half way", violations=[("x", "bad")])


def _identity(value: bytes) -> bytes:
    return value


def _handlers() -> grpc.GenericRpcHandler:
    def unary(fn: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )

    return grpc.method_handlers_generic_handler(
        "test.Kit",
        {
            "BadInput": unary(_bad_input),
            "Missing": unary(_missing),
            "Bug": unary(_bug),
            "Unlisted": unary(_missing),
            "Slow": unary(_slow),
            "Stream": grpc.unary_stream_rpc_method_handler(
                _stream_bug, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


@pytest.fixture(scope="module")
async def kit(key_env: dict[str, str]) -> AsyncIterator[grpc.aio.Channel]:
    public = Path(key_env["FRACTAL_SERVICE_PUBLIC_KEY_FILE"]).read_text()
    access = {f"/test.Kit/{m}": Access.PUBLIC for m in ("BadInput", "Missing", "Bug", "Stream")}
    auth = AuthInterceptor(
        access, internal_verifier=TokenVerifier(public, audience=INTERNAL_AUDIENCE)
    )
    server = GrpcServer("127.0.0.1:0", [ErrorInterceptor(), LoggingInterceptor(), auth])
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0.1)


async def _call(channel: grpc.aio.Channel, method: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/test.Kit/{method}")(b"x")
    return err.value


async def test_domain_errors_carry_details(kit: grpc.aio.Channel) -> None:
    err = await _call(kit, "BadInput")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(err)
    assert info is not None and info.reason == "INVALID_ARGUMENT" and info.domain
    assert fields == ["name"]
    err = await _call(kit, "Missing")
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "Thing 7 not found"


async def test_unexpected_errors_are_internal_without_traceback(kit: grpc.aio.Channel) -> None:
    err = await _call(kit, "Bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "incident" in (err.details() or "")
    assert "secret" not in (err.details() or "") and "Traceback" not in (err.details() or "")


async def test_methods_missing_from_the_access_table_are_refused(kit: grpc.aio.Channel) -> None:
    err = await _call(kit, "Unlisted")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_stream_errors_after_first_message(kit: grpc.aio.Channel) -> None:
    call = kit.unary_stream("/test.Kit/Stream")(b"x")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in call:
            received.append(item)
    assert received == [b"first"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_serving(kit: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(kit)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_graceful_stop_drains_calls_in_flight(key_env: dict[str, str]) -> None:
    """stop(grace): health turns NOT_SERVING, calls in flight finish, new calls are refused."""
    import asyncio

    public = Path(key_env["FRACTAL_SERVICE_PUBLIC_KEY_FILE"]).read_text()
    auth = AuthInterceptor(
        {"/test.Kit/Slow": Access.PUBLIC},
        internal_verifier=TokenVerifier(public, audience=INTERNAL_AUDIENCE),
    )
    server = GrpcServer("127.0.0.1:0", [ErrorInterceptor(), auth])
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        slow = asyncio.ensure_future(channel.unary_unary("/test.Kit/Slow")(b"x"))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop(5.0))
        await asyncio.sleep(0.05)
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        assert await slow == b"done:x"
        await stopping
