"""Hostile requests for any request type, built from its descriptor as raw wire bytes.

Each hostile value is appended, wire-encoded, to a sensible base request (one with real ids), so
it reaches as deep into the servicer as the checks let it. Raw bytes let us send what no client
library would: invalid UTF-8 in a string, a corrupt sub-message, nesting beyond the parser's
limit.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator, Sequence
from functools import cache

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
HUGE = 200_000  # characters: far past every declared limit, far below the message size limit
_STRUCT = "google.protobuf.Struct"
_NOT_WALKED = ("google.protobuf.Value", "google.protobuf.ListValue")

FORGED_TOKENS = [
    "abc",
    "!!!not-base64!!!",
    *(
        base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
        for state in (
            {"q": "projects", "after": "x"},
            {"q": "projects"},
            {"q": "projects", "after": [1]},
            {"q": "projects", "after": 10**30},
            {"q": "projects", "after": -5},
            ["not", "a", "dict"],
        )
    ),
    "eyJxIjoicHJvamVjdHMiLCJhZnRlciI6MX0.AAAAAAAAAAAAAAAAAAAAAA",  # well-formed, bad signature
]


# --- wire encoding ---------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def wrap(path: Sequence[FieldDescriptor], leaf: bytes) -> bytes:
    """``leaf`` (the encoded last field) inside the sub-messages of ``path[:-1]``."""
    payload = leaf
    for field in reversed(path[:-1]):
        payload = length_delimited(field.number, payload)
    return payload


def scalar(field: FieldDescriptor, value: object) -> bytes:
    """One occurrence of a scalar field, wire-encoded."""
    t = field.type
    if t in (F.TYPE_STRING, F.TYPE_BYTES):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return length_delimited(field.number, raw)
    if t in (F.TYPE_DOUBLE,):
        return tag(field.number, 1) + struct.pack("<d", value)
    if t in (F.TYPE_FLOAT,):
        return tag(field.number, 5) + struct.pack("<f", value)
    if t in (F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return tag(field.number, 1) + struct.pack("<Q", int(value) & (2**64 - 1))  # type: ignore[call-overload]
    if t in (F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return tag(field.number, 5) + struct.pack("<I", int(value) & (2**32 - 1))  # type: ignore[call-overload]
    if t in (F.TYPE_SINT32, F.TYPE_SINT64):
        n = int(value)  # type: ignore[call-overload]
        return tag(field.number, 0) + varint((n << 1) ^ (n >> 63))
    return tag(field.number, 0) + varint(int(value))  # type: ignore[call-overload]


def deep_list_value(levels: int) -> bytes:
    """A Value nesting ``levels`` ListValues (two message levels each)."""
    value = tag(1, 0) + varint(0)  # null_value
    for _ in range(levels):
        value = length_delimited(6, length_delimited(1, value))  # Value.list_value.values
    return value


def struct_with(key: bytes, value: bytes) -> bytes:
    """A Struct with one entry (the key raw, the value an encoded Value)."""
    return length_delimited(1, length_delimited(1, key) + length_delimited(2, value))


def struct_of(data: dict[str, object]) -> bytes:
    s = struct_pb2.Struct()
    s.update(data)
    return s.SerializeToString()


@cache
def _wide_struct() -> bytes:
    """A Struct of 30,000 keys, encoded once: it goes into every Struct field of every RPC for
    every principal, and building it with ``Struct.update`` (pure Python) each time was a third
    of the fuzz run."""
    return struct_of({f"k{i}": [None, True, 1.5, "s"] for i in range(30_000)})


# --- hostile values per field type -----------------------------------------------------------

_INT_EXTREMES = {
    F.TYPE_INT32: (-1, -(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-1, -(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-1, -(2**31), 2**31 - 1),
    F.TYPE_INT64: (-1, -(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-1, -(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-1, -(2**63), 2**63 - 1),
    F.TYPE_UINT32: (2**32 - 1,),
    F.TYPE_FIXED32: (2**32 - 1,),
    F.TYPE_UINT64: (2**64 - 1,),
    F.TYPE_FIXED64: (2**64 - 1,),
    F.TYPE_ENUM: (12345, -1),
}


def leaf_values(field: FieldDescriptor) -> Iterator[tuple[str, bytes]]:
    """(label, encoded field) of each hostile value for one leaf field."""
    t = field.type
    if t == F.TYPE_STRING:
        yield "nul", scalar(field, "a\x00b")
        yield "huge", scalar(field, "x" * HUGE)
        yield "bad-utf8", scalar(field, b"ok\xff\xfe\xc0")
        if "token" in field.name:
            for i, token in enumerate(FORGED_TOKENS):
                yield f"forged-token-{i}", scalar(field, token)
    elif t == F.TYPE_BYTES:
        yield "huge", scalar(field, b"x" * HUGE)
    elif t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        for value in (math.nan, math.inf, -math.inf):
            yield f"number-{value}", scalar(field, value)
    elif t in _INT_EXTREMES:
        for value in _INT_EXTREMES[t]:
            yield f"int-{value}", scalar(field, value)
    elif t == F.TYPE_MESSAGE and field.message_type.full_name == _STRUCT:
        n = field.number
        yield "struct-nan", length_delimited(n, struct_of({"a": math.nan}))
        yield "struct-inf", length_delimited(n, struct_of({"a": {"b": [1, -math.inf]}}))
        yield "struct-nul-key", length_delimited(n, struct_of({"k\x00": 1}))
        yield "struct-nul-string", length_delimited(n, struct_of({"k": ["v\x00"]}))
        yield "struct-bad-utf8-key", length_delimited(n, struct_with(b"\xff", tag(1, 0) + b"\x00"))
        yield "struct-deep-40", length_delimited(n, struct_with(b"k", deep_list_value(40)))
        yield "struct-deep-300", length_delimited(n, struct_with(b"k", deep_list_value(300)))
        yield "struct-wide", length_delimited(n, _wide_struct())


def leaves(
    descriptor: Descriptor, depth: int = 4, prefix: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Paths to every leaf field below ``descriptor`` (map keys and values included)."""
    for field in descriptor.fields:
        path = (*prefix, field)
        message = field.message_type
        if message is None or message.full_name == _STRUCT:
            yield path
        elif message.full_name in _NOT_WALKED or depth == 0:
            continue
        else:
            yield from leaves(message, depth - 1, path)


def corrupt_messages(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    """Bytes that are not a valid encoding of any message, or of one of its sub-messages."""
    yield "corrupt-varint", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    yield "corrupt-truncated", b"\x0a\x7fab"
    yield "corrupt-wire-type", b"\x0f"
    yield "corrupt-end-group", b"\x0c"
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE:
            yield f"corrupt-{field.name}", length_delimited(field.number, b"\xff\xff\xff\x0a\x7f")


def hostile_requests(descriptor: Descriptor, base: bytes) -> Iterator[tuple[str, bytes]]:
    """(label, request bytes): one hostile value at a time on top of ``base``."""
    yield "empty", b""
    yield "base", base
    yield from corrupt_messages(descriptor)
    for path in leaves(descriptor):
        name = ".".join(f.name for f in path)
        for label, leaf in leaf_values(path[-1]):
            yield f"{name}:{label}", base + wrap(path, leaf)


# --- hypothesis: well-typed requests of any type ---------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _small_or_any(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(-3, 10).filter(lambda n: low <= n <= high) | st.integers(low, high)


def value_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[object]:
    t = field.type
    if t == F.TYPE_STRING:
        return _text
    if t == F.TYPE_BYTES:
        return st.binary(max_size=40)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=64 if t == F.TYPE_DOUBLE else 32)
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t in _INT_RANGES:
        return _small_or_any(*_INT_RANGES[t])
    message = field.message_type
    if message.full_name == _STRUCT:
        return st.dictionaries(_text, _json, max_size=4)
    if message.full_name in _NOT_WALKED or depth == 0:
        return st.just(None)
    return message_strategy(message, depth - 1)


def message_strategy(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy[object]:
    """A dict ``{field name: value}`` for ``descriptor`` (see ``fill``); any field may be left
    out, maps and repeated fields hold a few entries."""
    fields: dict[str, st.SearchStrategy[object]] = {}
    for field in descriptor.fields:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            fields[field.name] = st.dictionaries(
                value_strategy(key, depth), value_strategy(value, depth), max_size=3
            )
        elif field.is_repeated:
            fields[field.name] = st.lists(value_strategy(field, depth), max_size=3)
        else:
            fields[field.name] = value_strategy(field, depth)
    return st.fixed_dictionaries({}, optional=fields)


def fill(message: object, values: dict[str, object]) -> None:
    """Set ``values`` (from ``message_strategy``) on a message of the matching type."""
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        sub = field.message_type
        if value is None:
            continue
        if sub is not None and sub.GetOptions().map_entry:
            inner = sub.fields_by_name["value"]
            for k, v in value.items():  # type: ignore[attr-defined]
                if inner.message_type is None:
                    target[k] = v
                elif v is not None:
                    fill(target[k], v)
        elif field.is_repeated:
            for v in value:  # type: ignore[attr-defined]
                if sub is None:
                    target.append(v)
                elif v is not None:
                    fill(target.add(), v)
        elif sub is not None and sub.full_name == _STRUCT:
            target.update(value)
        elif sub is not None:
            fill(target, value)  # type: ignore[arg-type]
            target.SetInParent()
        else:
            setattr(message, name, value)
