"""The validation interceptor on client- and bidi-streaming calls (generic handlers of a test
service streaming CreateProjectRequest messages): every streamed request is checked as the
servicer reads it, and the first bad or malformed one ends the call with INVALID_ARGUMENT before
the servicer sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from fractal.v2 import project_service_pb2 as pb
from fractal_grpc.grpckit.interceptors import ErrorInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from fractal_grpc.grpckit.validation import ValidationInterceptor
from helpers import error_details

Request = pb.CreateProjectRequest


class Seen:
    """What the servicer read, per call."""

    def __init__(self) -> None:
        self.names: list[str] = []


@pytest.fixture
async def kit() -> AsyncIterator[tuple[grpc.aio.Channel, Seen]]:
    seen = Seen()

    async def upload(requests: AsyncIterator[Request], context: Any) -> bytes:
        async for request in requests:
            seen.names.append(request.name)
        return b"ok"

    async def echo(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            seen.names.append(request.name)
            yield request.name.encode()

    def identity(value: bytes) -> bytes:
        return value

    handlers = grpc.method_handlers_generic_handler(
        "test.Streams",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=Request.FromString, response_serializer=identity
            ),
            "Echo": grpc.stream_stream_rpc_method_handler(
                echo, request_deserializer=Request.FromString, response_serializer=identity
            ),
        },
    )
    server = GrpcServer("127.0.0.1:0", [ErrorInterceptor(), ValidationInterceptor()])
    server.server.add_generic_rpc_handlers((handlers,))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, seen
    await server.stop(0.1)


def _good(name: str) -> bytes:
    return Request(name=name).SerializeToString()


# A field 1 (name) whose bytes are not UTF-8.
MALFORMED = b"\x0a\x02\xff\xfe"


async def _upload(channel: grpc.aio.Channel, requests: list[bytes]) -> bytes:
    async def stream() -> AsyncIterator[bytes]:
        for request in requests:
            yield request

    call = channel.stream_unary("/test.Streams/Upload", request_serializer=lambda b: b)
    result: bytes = await call(stream())
    return result


async def test_good_streamed_requests_reach_the_servicer(
    kit: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = kit
    assert await _upload(channel, [_good("a"), _good("b")]) == b"ok"
    assert seen.names == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "reason", "field"),
    [
        (_good("x\0y"), "INVALID_ARGUMENT", "name"),
        (_good(""), "INVALID_ARGUMENT", "name"),
        (MALFORMED, "MALFORMED_REQUEST", None),
    ],
    ids=["nul", "empty-name", "malformed"],
)
async def test_the_first_bad_streamed_request_ends_a_client_stream(
    kit: tuple[grpc.aio.Channel, Seen], bad: bytes, reason: str, field: str | None
) -> None:
    channel, seen = kit
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _upload(channel, [_good("a"), bad, _good("c")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(err.value)
    assert info is not None and info.reason == reason
    assert fields == ([field] if field else [])
    assert "Error" not in (err.value.details() or "")
    assert seen.names == ["a"]


async def test_a_bad_request_ends_a_bidi_stream(kit: tuple[grpc.aio.Channel, Seen]) -> None:
    channel, seen = kit
    call = channel.stream_stream("/test.Streams/Echo", request_serializer=lambda b: b)
    stream = call()
    await stream.write(_good("a"))
    assert await stream.read() == b"a"
    await stream.write(_good("b\0"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert seen.names == ["a"]
