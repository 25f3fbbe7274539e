"""Every RPC that server reflection lists, on every listener, with its request type.

Nothing here names a service or a method: a new RPC is fuzzed as soon as a server lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# grpc's own reflection service is infrastructure we do not implement (a bidi stream of queries).
SKIPPED_SERVICES = ("grpc.reflection.",)


@dataclass(frozen=True)
class Rpc:
    address: str
    path: str  # "/package.Service/Method"
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def message(self) -> Message:
        """An empty request (a class of the reflection pool, not of the generated stubs)."""
        return message_factory.GetMessageClass(self.input)()


def list_rpcs(addresses: Sequence[str]) -> list[Rpc]:
    """The RPCs each listener's reflection lists (a sync channel: reflection is a stream)."""
    rpcs: list[Rpc] = []
    for address in addresses:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = descriptor_pool.DescriptorPool(database)
            for service_name in database.get_services():
                if service_name.startswith(SKIPPED_SERVICES):
                    continue
                service = pool.FindServiceByName(service_name)
                for method in service.methods:
                    rpcs.append(
                        Rpc(
                            address=address,
                            path=f"/{service.full_name}/{method.name}",
                            input=method.input_type,
                            client_streaming=method.client_streaming,
                            server_streaming=method.server_streaming,
                        )
                    )
    return rpcs
