"""Request validation, one interceptor for every service: the rules are declared in the protos.

Every request is checked before any servicer runs:

- bytes that do not parse as the method's request message (bad UTF-8 in a string field, a corrupt
  sub-message, nesting beyond the parser's depth limit) are INVALID_ARGUMENT with a plain message,
  instead of grpc's UNKNOWN naming a Python exception;
- the ``buf.validate`` rules of the request's fields (lengths, ranges, required fields, no NUL
  character in a string, finite numbers), evaluated by protovalidate's native validator;
- the values of the maps marked ``(fractal.v2.scalar_values)`` (image attributes, attribute
  filters): JSON scalars only (null only where the option allows it), finite numbers, strings of
  at most ``MAX_SCALAR_BYTES`` bytes without NUL; checked in one tight loop here rather than by a
  CEL rule per value, which costs three times as much on an AddImages of 100,000 images;
- the values of ``google.protobuf.Struct`` fields (task args, meta, schemas), which no proto rule
  can reach: every string and key without NUL (PostgreSQL cannot store it), every number finite
  (JSON cannot hold NaN or Infinity), at most ``MAX_STRUCT_DEPTH`` levels and
  ``MAX_STRUCT_VALUES`` values per request.

A bad request is INVALID_ARGUMENT with one ``BadRequest`` field violation per bad field.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import cache
from typing import Any

import grpc
import protovalidate
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fractal.v2 import options_pb2
from fractal_grpc.grpckit.errors import InvalidArgument, Violations, bounded
from fractal_grpc.grpckit.interceptors import Stream, Unary, _HandlerWrapper

MAX_STRUCT_DEPTH = 32
MAX_STRUCT_VALUES = 100_000
# At most this many violations are reported (the first ones); the message counts the rest.
MAX_REPORTED = 10
# Requests larger than this are parsed and checked in a thread (an AddImages of 100,000 images,
# ~10 MB, takes about a second): other calls go on meanwhile. Smaller ones cost microseconds.
OFF_LOOP_BYTES = 256 * 1024
# Longest string value of an image attribute or an attribute filter.
MAX_SCALAR_BYTES = 1024

_STRUCT_TYPES = frozenset(
    d.full_name for d in (struct_pb2.Struct.DESCRIPTOR, struct_pb2.Value.DESCRIPTOR,
                          struct_pb2.ListValue.DESCRIPTOR)
)  # fmt: skip

_DESCRIPTIONS = {
    # protovalidate's own text quotes the (invisible) character.
    "string.not_contains": "must not contain the NUL character",
}


class Malformed:
    """Stands for a request whose bytes did not parse; the wrapped handler refuses it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


class Unparsed:
    """A large request's bytes, parsed (and checked) by the wrapped handler off the loop."""

    __slots__ = ("data", "parse")

    def __init__(self, data: bytes, parse: Callable[[bytes], Any]) -> None:
        self.data = data
        self.parse = parse


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` that returns a ``Malformed`` marker instead of raising, and an
    ``Unparsed`` one for a request over ``OFF_LOOP_BYTES``.

    grpc runs the deserializer on the event loop, before any interceptor's handler; an exception
    there becomes UNKNOWN with the exception's class name in the message.
    """
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    type_name = owner.DESCRIPTOR.name if owner is not None else "request"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - DecodeError, RecursionError, …: all mean "malformed"
            return Malformed(type_name)

    def run(data: bytes) -> Any:
        return Unparsed(data, parse) if len(data) > OFF_LOOP_BYTES else parse(data)

    return run


class Validator:
    """Checks one request message; ``check`` raises ``InvalidArgument`` listing what is wrong."""

    def __init__(self) -> None:
        self._rules = protovalidate.Validator()

    async def accept(self, request: Any) -> Any:
        """The checked request (parsed first, if the deserializer left it as bytes)."""
        if isinstance(request, Unparsed):
            return await asyncio.to_thread(self._parse_and_check, request)
        self.check(request)
        return request

    def _parse_and_check(self, unparsed: Unparsed) -> Any:
        request = unparsed.parse(unparsed.data)
        self.check(request)
        return request

    def check(self, request: Any) -> None:
        if isinstance(request, Malformed):
            raise InvalidArgument(
                f"the request is not a valid {request.type_name} message (malformed bytes, "
                "invalid UTF-8 in a string field, or nesting deeper than allowed)",
                reason="MALFORMED_REQUEST",
            )
        found = Violations()
        for violation in self._rules.collect_violations(request):
            proto = violation.proto
            description = _DESCRIPTIONS.get(proto.rule_id) or proto.message
            if proto.for_key:
                description = f"key {description}"
            found.add(_field_path(proto.field.elements if proto.field else ()), description)
            if len(found.items) > MAX_REPORTED:
                break
        if scalar_holders(request.DESCRIPTOR):
            _check_scalar_maps(request, "", found)
        if len(found.items) <= MAX_REPORTED and struct_fields(request.DESCRIPTOR):
            budget = [MAX_STRUCT_VALUES]
            for path, struct in _structs(request, ""):
                _check_value(struct, path, 1, budget, found)
                if len(found.items) > MAX_REPORTED:
                    break
        found.raise_if_any()


class ValidationInterceptor(_HandlerWrapper):
    """Refuses malformed or rule-breaking requests before the servicer sees them.

    Register it after the auth interceptor (unauthenticated callers learn nothing about the
    rules). A unary request is checked before the servicer runs; the requests of a client- or
    bidi-streaming call each as the servicer reads it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.validator = Validator()

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # The base class turns a stream written with context.write (grpc's health Watch) into
        # an iterator, so a refusal raised here reaches the error interceptor like any other.
        deserializer = tolerant(handler.request_deserializer)
        return super()._wrap(method, handler._replace(request_deserializer=deserializer))

    def around_unary(self, method: str, inner: Unary) -> Unary:
        accept = self.validator.accept

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner(await accept(request), context)

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        accept = self.validator.accept

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async for item in inner(await accept(request), context):
                yield item

        return run

    def around_stream_unary(self, method: str, inner: Unary) -> Unary:
        accept = self.validator.accept

        async def run(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner(_each_checked(requests, accept), context)

        return run

    def around_stream_stream(self, method: str, inner: Stream) -> Stream:
        accept = self.validator.accept

        async def run(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for item in inner(_each_checked(requests, accept), context):
                yield item

        return run


async def _each_checked(
    requests: AsyncIterator[Any], accept: Callable[[Any], Awaitable[Any]]
) -> AsyncIterator[Any]:
    """The streamed requests of a client- or bidi-streaming call, each checked as it is read:
    the first bad one ends the call with INVALID_ARGUMENT, before the servicer sees it (a
    servicer reads its requests from this iterator, not with ``context.read``)."""
    async for request in requests:
        yield await accept(request)


def _field_path(elements: Any) -> str:
    """``images[3].attributes["k"]`` from protovalidate's field path."""
    parts: list[str] = []
    for element in elements:
        parts.append(("." if parts else "") + element.field_name)
        sub = element.subscript
        if sub is None:
            continue
        if sub.field == "string_key":
            parts.append(f'["{bounded(str(sub.value), 40)}"]')
        else:
            parts.append(f"[{sub.value}]")
    return "".join(parts)


def scalar_option(field: FieldDescriptor) -> options_pb2.ScalarValues | None:
    """The ``scalar_values`` option of a map field, or None when it has none."""
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.scalar_values):
        return None
    option: options_pb2.ScalarValues = options.Extensions[options_pb2.scalar_values]
    return option


@cache
def scalar_maps(descriptor: Descriptor) -> tuple[tuple[str, bool], ...]:
    """(name, allow_null) of the fields of ``descriptor`` marked ``scalar_values``."""
    found = []
    for field in descriptor.fields:
        option = scalar_option(field)
        if option is not None:
            found.append((field.name, option.allow_null))
    return tuple(found)


@cache
def scalar_holders(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The message fields of ``descriptor`` whose type is, or contains, a scalar map."""
    return tuple(
        f
        for f in descriptor.fields
        if f.message_type is not None
        and scalar_option(f) is None
        and _holds_scalars(f.message_type, frozenset())
    )


def _holds_scalars(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if scalar_maps(descriptor):
        return True
    if descriptor.full_name in seen:
        return False
    inner = seen | {descriptor.full_name}
    return any(
        f.message_type is not None and _holds_scalars(f.message_type, inner)
        for f in descriptor.fields
    )


def _check_scalar_maps(message: Message, prefix: str, found: Violations) -> None:
    """Checks every scalar map at or below ``message`` (see ``_scalar_problem``)."""
    for name, allow_null in scalar_maps(message.DESCRIPTOR):
        entries = getattr(message, name)
        if entries and _suspects((entries,)):
            _report(entries, allow_null, f"{prefix}{name}", found)
            if len(found.items) > MAX_REPORTED:
                return
    for field in scalar_holders(message.DESCRIPTOR):
        value = getattr(message, field.name)
        inner = field.message_type
        flat = (
            field.is_repeated
            and inner is not None
            and not inner.GetOptions().map_entry
            and not scalar_holders(inner)
            and len(scalar_maps(inner)) == 1
        )
        if flat:
            # The hot path (AddImages: images[i].attributes): one flat pass.
            assert inner is not None
            ((name, allow_null),) = scalar_maps(inner)
            for i in _suspects([getattr(item, name) for item in value]):
                path = f"{prefix}{field.name}[{i}].{name}"
                _report(getattr(value[i], name), allow_null, path, found)
                if len(found.items) > MAX_REPORTED:
                    return
            continue
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items: Any = ((f'{field.name}["{bounded(k, 40)}"]', v) for k, v in value.items())
            else:
                items = ((f"{field.name}[{i}]", v) for i, v in enumerate(value))
        elif message.HasField(field.name):
            items = ((field.name, value),)
        else:
            continue
        for path, item in items:
            if isinstance(item, Message):
                _check_scalar_maps(item, f"{prefix}{path}.", found)
                if len(found.items) > MAX_REPORTED:
                    return


def _suspects(maps: Any) -> list[int]:
    """The indexes of the maps with a value that is not plainly fine (a finite number, a
    boolean, a short string without NUL); ``_report`` then says what is wrong, if anything.
    One flat loop: it runs for every attribute of every image of an AddImages."""
    isfinite = math.isfinite
    short = MAX_SCALAR_BYTES // 4
    found = []
    for i, entries in enumerate(maps):
        for key in entries:
            value = entries[key]
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                text = value.string_value
                if len(text) <= short and "\x00" not in text:
                    continue
            elif kind == "number_value":
                if isfinite(value.number_value):
                    continue
            elif kind == "bool_value":
                continue
            found.append(i)
            break
    return found


def _report(entries: Any, allow_null: bool, path: str, found: Violations) -> None:
    for key in entries:
        problem = _scalar_problem(entries[key], allow_null)
        if problem is not None:
            found.add(f'{path}["{bounded(key, 40)}"]', problem)


def _scalar_problem(value: struct_pb2.Value, allow_null: bool) -> str | None:
    """Why ``value`` is not an acceptable attribute value, or None when it is."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        # At most 4 bytes per character: short strings need no encoding to be measured.
        if len(text) * 4 > MAX_SCALAR_BYTES and len(text.encode()) > MAX_SCALAR_BYTES:
            return f"must be at most {MAX_SCALAR_BYTES} bytes long"
        if "\x00" in text:
            return "must not contain the NUL character"
        return None
    if kind == "number_value":
        if math.isfinite(value.number_value):
            return None
        return "must be a finite number (no NaN or Infinity)"
    if kind == "bool_value":
        return None
    if kind is None or kind == "null_value":
        return None if allow_null else "must not be null (a string, a number or a boolean)"
    return "must be a string, a number or a boolean, not a list or an object"


@cache
def struct_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The message fields of ``descriptor`` that are, or contain, a Struct/Value/ListValue
    (the scalar maps excepted: ``_check_scalar_maps`` checks those)."""
    return tuple(
        f
        for f in descriptor.fields
        if f.message_type is not None
        and scalar_option(f) is None
        and _holds_struct(f.message_type, frozenset())
    )


def _holds_struct(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in _STRUCT_TYPES:
        return True
    if descriptor.full_name in seen:
        return False
    inner = seen | {descriptor.full_name}
    return any(
        f.message_type is not None
        and scalar_option(f) is None
        and _holds_struct(f.message_type, inner)
        for f in descriptor.fields
    )


def _structs(message: Message, prefix: str) -> Iterator[tuple[str, Message]]:
    """(path, value) of every set Struct/Value/ListValue field below ``message``."""
    for field in struct_fields(message.DESCRIPTOR):
        name = f"{prefix}{field.name}"
        value = getattr(message, field.name)
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items: Any = ((f'{name}["{bounded(k, 40)}"]', v) for k, v in value.items())
            else:
                items = ((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif message.HasField(field.name):
            items = [(name, value)]
        else:
            continue
        for path, item in items:
            if not isinstance(item, Message):
                continue
            if item.DESCRIPTOR.full_name in _STRUCT_TYPES:
                yield path, item
            else:
                yield from _structs(item, f"{path}.")


def _check_value(value: Any, path: str, depth: int, budget: list[int], found: Violations) -> None:
    """Walks a Struct, ListValue or Value (or the Python value of a Struct entry)."""
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            found.add(path, f"too many values (at most {MAX_STRUCT_VALUES} per request)")
        return
    if depth > MAX_STRUCT_DEPTH:
        found.add(path, f"nested too deep (at most {MAX_STRUCT_DEPTH} levels)")
        return
    if isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            _check_value(value.struct_value, path, depth, budget, found)
        elif kind == "list_value":
            _check_value(value.list_value, path, depth, budget, found)
        elif kind == "number_value" and not math.isfinite(value.number_value):
            found.add(path, "must be a finite number (no NaN or Infinity)")
        elif kind == "string_value" and "\x00" in value.string_value:
            found.add(path, "must not contain the NUL character")
    elif isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            if "\x00" in key:
                found.add(path, "keys must not contain the NUL character")
            _check_value(item, f'{path}["{bounded(key, 40)}"]', depth + 1, budget, found)
    elif isinstance(value, struct_pb2.ListValue):
        for i, item in enumerate(value.values):
            _check_value(item, f"{path}[{i}]", depth + 1, budget, found)
