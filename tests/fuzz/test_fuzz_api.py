"""Fuzzing every RPC that reflection lists, as a user, a superuser and a service.

Whatever a client sends, the answer is never INTERNAL or UNKNOWN, its message is bounded and
names no exception class, and a refused call writes nothing (the row counts of every api table
are the same before and after it). Two sources of requests: hostile values, one field at a time
on a request with real ids (``hostile.py``), and hypothesis-generated well-typed requests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from answers import FORBIDDEN_CODES, LEAK, MAX_MESSAGE_CHARS
from fuzz_world import FuzzWorld, Principal
from hostile import fill, hostile_requests, message_strategy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rpcs import Rpc

MAX_TRAILER_BYTES = 8 * 1024
CALL_TIMEOUT = 30.0


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    trailer_bytes: int


# Plausible values for the plain string fields of a base request, by field name, so that a
# hostile value in one field is not refused only because another one is empty.
BASE_STRINGS = {
    "name": "fuzz",
    "source": "fuzz-source",
    "zarr_dir": "/fuzz/base",
    "email": "fuzz@example.org",
    "password": "fuzz-password",
}


def _request_ids(rpc: Rpc, principal: Principal) -> bytes:
    """The request with every id field set to the principal's objects, and plausible values in
    its plain string fields."""
    message = rpc.message()
    for name, value in principal.ids.items():
        if name in rpc.input.fields_by_name:
            setattr(message, name, value)
    for name, text in BASE_STRINGS.items():
        field = rpc.input.fields_by_name.get(name)
        if field is not None and field.type == field.TYPE_STRING and not field.has_presence:
            setattr(message, name, text)
    return message.SerializeToString()


async def call(channel: grpc.aio.Channel, rpc: Rpc, request: bytes, md: Sequence) -> Answer:
    """One call with raw request bytes; a stream is read up to its first message."""
    try:
        if rpc.client_streaming:
            requests = iter([request])
            if rpc.server_streaming:
                stream = channel.stream_stream(rpc.path)(
                    requests, metadata=md, timeout=CALL_TIMEOUT
                )
                async for _ in stream:
                    stream.cancel()
                    break
            else:
                await channel.stream_unary(rpc.path)(requests, metadata=md, timeout=CALL_TIMEOUT)
        elif rpc.server_streaming:
            stream = channel.unary_stream(rpc.path)(request, metadata=md, timeout=CALL_TIMEOUT)
            async for _ in stream:
                stream.cancel()  # it answered; a watch would go on for ever
                break
        else:
            await channel.unary_unary(rpc.path)(request, metadata=md, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        trailer = sum(len(k) + len(v) for k, v in (err.trailing_metadata() or ()))
        return Answer(err.code(), err.details() or "", trailer)
    return Answer(grpc.StatusCode.OK, "", 0)


def problems(answer: Answer) -> list[str]:
    found = []
    if answer.code in FORBIDDEN_CODES:
        found.append(f"answered {answer.code.name}")
    if len(answer.details) > MAX_MESSAGE_CHARS:
        found.append(f"a message of {len(answer.details)} characters")
    if LEAK.search(answer.details):
        found.append("a message naming an exception or a traceback")
    if answer.trailer_bytes > MAX_TRAILER_BYTES:
        found.append(f"{answer.trailer_bytes} bytes of trailing metadata")
    return found


async def checked_call(
    world: FuzzWorld,
    channel: grpc.aio.Channel,
    rpc: Rpc,
    principal: Principal,
    request: bytes,
    before: tuple[int, ...] | None = None,
) -> tuple[Answer, list[str], tuple[int, ...] | None]:
    """The answer, its problems, and the row counts after a refused call (None after an
    accepted one). ``before``: the row counts as the caller knows them right before this call
    (those after the previous, refused, call of a loop: nothing else writes to this database),
    read here when not given."""
    if before is None:
        before = await world.row_counts()
    answer = await call(channel, rpc, request, principal.metadata)
    found = problems(answer)
    if answer.code == grpc.StatusCode.OK:
        return answer, found, None
    after = await world.row_counts()
    if after != before:
        found.append(f"refused ({answer.code.name}) but wrote rows")
    return answer, found, after


def _report(failures: list[str], codes: Counter[str], calls: int) -> str:
    bad = codes["INTERNAL"] + codes["UNKNOWN"]
    summary = f"{calls} calls, INTERNAL+UNKNOWN: {bad}; codes: {dict(codes.most_common())}"
    print(summary)  # the figure for the record (pytest -s shows it)
    return summary + "\n" + "\n".join(failures[:60])


async def test_every_rpc_is_listed(fuzz_world: FuzzWorld) -> None:
    names = {rpc.path for rpc in fuzz_world.rpcs}
    # A sample that must be there; the fuzz itself never names an RPC.
    assert "/fractal.v2.ProjectService/ListProjects" in names
    assert "/grpc.health.v1.Health/Check" in names
    assert len(names) >= 30


async def test_hostile_values_on_every_rpc(fuzz_world: FuzzWorld) -> None:
    failures: list[str] = []
    codes: Counter[str] = Counter()
    calls = 0
    counts: tuple[int, ...] | None = None  # the row counts after the last refused call
    for rpc in fuzz_world.rpcs:
        async with grpc.aio.insecure_channel(rpc.address) as channel:
            for principal in fuzz_world.principals:
                base = _request_ids(rpc, principal)
                for label, request in hostile_requests(rpc.input, base):
                    answer, found, counts = await checked_call(
                        fuzz_world, channel, rpc, principal, request, counts
                    )
                    calls += 1
                    codes[answer.code.name] += 1
                    failures.extend(
                        f"{rpc.path} as {principal.name} with {label}: {p}"
                        f" ({answer.details[:200]!r})"
                        for p in found
                    )
    assert not failures, _report(failures, codes, calls)
    _report(failures, codes, calls)


async def test_a_request_over_the_size_limit_is_refused_plainly(fuzz_world: FuzzWorld) -> None:
    from fractal_grpc.settings import DEFAULT_API_MAX_MESSAGE_BYTES

    rpc = next(r for r in fuzz_world.rpcs if r.path.endswith("/AddImages"))
    principal = fuzz_world.principals[0]
    request = _request_ids(rpc, principal) + b"\x1a" + b"\xff\xff\xff\x0f"  # a 32 MiB image …
    request += b"\x00" * (DEFAULT_API_MAX_MESSAGE_BYTES + 1)
    async with grpc.aio.insecure_channel(
        rpc.address, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        answer, found, _ = await checked_call(fuzz_world, channel, rpc, principal, request)
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not found


@st.composite
def _fuzzed_call(draw: st.DrawFn, world: FuzzWorld) -> tuple[Rpc, Principal, bytes]:
    rpc = draw(st.sampled_from(world.rpcs))
    principal = draw(st.sampled_from(world.principals))
    message = rpc.message()
    fill(message, draw(message_strategy(rpc.input)))
    if draw(st.booleans()):  # mostly real ids, so the request gets past the lookups
        for name, value in principal.ids.items():
            if name in rpc.input.fields_by_name:
                setattr(message, name, value)
    return rpc, principal, message.SerializeToString()


_GENERATED: Counter[str] = Counter()


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    phases=[Phase.generate],  # no shrinking: each example is a network call
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_generated_requests_on_every_rpc(fuzz_world: FuzzWorld, data: st.DataObject) -> None:
    rpc, principal, request = data.draw(_fuzzed_call(fuzz_world))
    async with grpc.aio.insecure_channel(rpc.address) as channel:
        answer, found, _ = await checked_call(fuzz_world, channel, rpc, principal, request)
    _GENERATED[answer.code.name] += 1
    assert not found, f"{rpc.path} as {principal.name}: {found} ({answer.details[:200]!r})"
