"""Server reflection that serves our protos with their comments.

The generated stubs register descriptors without ``source_code_info`` (protobuf's upb runtime
drops it), so reflection alone cannot show the documentation. ``make protos`` also writes
``fractal/descriptors.binpb``: our files as protoc saw them, comments included. The pool below
answers the reflection servicer with those files (by name, and with their dependencies), and
with the default pool's descriptors for everything else (google.protobuf, buf.validate).

A documented file is used only if its shape (names, numbers, types; options, JSON names and
comments aside) is the registered stub's, so a stale descriptor set never misleads a client; a
missing set just means reflection without comments.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message

log = logging.getLogger("fractal.grpc")

DESCRIPTOR_SET_FILE = "descriptors.binpb"
_IGNORED = frozenset({"options", "json_name", "source_code_info"})
_JSON_NAMES = frozenset({"json_name"})


def _shape(proto: descriptor_pb2.FileDescriptorProto) -> bytes:
    """``proto`` without what may differ between protoc's output and the runtime's copy."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    _strip(copy, _IGNORED)
    return copy.SerializeToString(deterministic=True)


def _strip(msg: Message, names: frozenset[str]) -> None:
    """Clear the fields called one of ``names`` in ``msg`` and every message inside it."""
    for field, value in msg.ListFields():
        if field.name in names:
            msg.ClearField(field.name)
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                _strip(item, names)


class _DocumentedFile:
    """A file descriptor whose ``CopyToProto`` gives the documented proto when there is one."""

    def __init__(self, descriptor: Any, documented: dict[str, descriptor_pb2.FileDescriptorProto]):
        self._descriptor = descriptor
        self._documented = documented

    @property
    def name(self) -> str:
        name: str = self._descriptor.name
        return name

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [_DocumentedFile(d, self._documented) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802
        documented = self._documented.get(self._descriptor.name)
        if documented is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.CopyFrom(documented)


class DocumentedPool:
    """The default descriptor pool, answering file look-ups with the documented files."""

    def __init__(
        self,
        documented: dict[str, descriptor_pb2.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._documented = documented

    def FindFileByName(self, name: str) -> _DocumentedFile:  # noqa: N802
        return _DocumentedFile(self._pool.FindFileByName(name), self._documented)

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:  # noqa: N802
        return _DocumentedFile(self._pool.FindFileContainingSymbol(symbol), self._documented)

    def __getattr__(self, name: str) -> Any:
        # Message and extension look-ups: the default pool's.
        return getattr(self._pool, name)


def load_documented(data: bytes, pool: Any = None) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files of a serialized ``FileDescriptorSet`` that match the registered stubs."""
    pool = pool or descriptor_pool.Default()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    documented = {}
    for proto in files:
        try:
            registered = descriptor_pb2.FileDescriptorProto()
            pool.FindFileByName(proto.name).CopyToProto(registered)
        except KeyError:
            continue  # not imported by this process: reflection does not list it anyway
        if _shape(registered) != _shape(proto):
            log.warning("%s differs from its stub: served without comments", proto.name)
            continue
        # Without protoc's lowerCamelCase json names, as in the runtime's copy: grpcurl then
        # reads and prints the proto field names (``access_token``, as the reference's JSON).
        _strip(proto, _JSON_NAMES)
        documented[proto.name] = proto
    return documented


def documented_pool() -> DocumentedPool | None:
    """The pool for the reflection service, or None (plain reflection) without the set."""
    try:
        data = resources.files("fractal").joinpath(DESCRIPTOR_SET_FILE).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        log.info("%s not found: reflection serves the protos without comments", DESCRIPTOR_SET_FILE)
        return None
    return DocumentedPool(load_documented(data))
