"""A ``grpc.aio`` server with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from fractal_grpc.grpckit.interceptors import _HandlerWrapper
from fractal_grpc.grpckit.reflection_docs import documented_pool

log = logging.getLogger("fractal.grpc")

# grpc's own default; each service sets the limit that fits its largest legitimate message.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options that send and receive messages up to ``max_bytes``."""
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]


class _Health(HealthServicer):
    """grpc's health servicer, with the List method it does not implement yet."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


class GrpcServer:
    """Owns a ``grpc.aio.Server``: add servicers, ``start()``, then ``stop()``.

    Health reports SERVING for "" and every registered service once started; ``stop()`` first
    flips them to NOT_SERVING (so load balancers move away), then lets calls drain for
    ``grace`` seconds before cancelling what remains.
    """

    def __init__(
        self,
        address: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        options = [*message_size_options(max_message_bytes), ("grpc.so_reuseport", 0)]
        interceptors = list(interceptors)
        if not any(isinstance(i, _HandlerWrapper) for i in interceptors):
            # Our interceptors let Encoded responses through the serializers; without one of
            # them, the base wrapper alone does.
            interceptors.append(_HandlerWrapper())
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        self.health = _Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []
        self.port = 0

    def add(
        self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, name: str
    ) -> None:
        """Register ``servicer`` with its generated ``add_*Servicer_to_server`` function."""
        register(servicer, self.server)
        self.service_names.append(name)

    async def start(self, *, serving: bool = True) -> int:
        """Listen; health answers SERVING, or NOT_SERVING until :meth:`set_serving` when
        ``serving`` is false (a service that is up but cannot do its work yet)."""
        names = [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection(
            [*names, reflection.SERVICE_NAME], self.server, pool=documented_pool()
        )
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.address}")
        await self.server.start()
        if serving:
            await self.set_serving()
        else:
            for name in ["", *self.service_names]:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("listening on %s (%s)", self.address, ", ".join(self.service_names))
        return self.port

    async def set_serving(self) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def run_until_signal(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Start, wait for SIGINT or SIGTERM, then stop: the main loop of every service."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    await stopping.wait()
    log.info("shutting down")
    await stop()


def configure_logging(level: str, log_format: str = "text", *, service: str = "") -> None:
    """The process's logging (``fractal_grpc.logs.configure``)."""
    from fractal_grpc import logs

    logs.configure(level, log_format, service=service)
