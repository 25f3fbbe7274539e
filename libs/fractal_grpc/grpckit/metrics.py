"""Prometheus metrics of a service: its registry, the RPC interceptor, the metrics that the
shared code (NATS consumers, the outbox relay) reports, and the HTTP endpoint.

Each service has one :class:`ServiceMetrics` with a registry of its own (several services can
share a process in the tests without mixing their numbers). The endpoint serves that registry
and prometheus_client's default one: process and GC metrics, and any metric a module defines
at import time (as the SLURM scheduler-call counter does), come along without wiring.

RPC metrics follow the usual gRPC names: ``fractal_grpc_server_started_total``,
``fractal_grpc_server_handled_total`` and ``fractal_grpc_server_handling_seconds``, labelled
with ``grpc_service``, ``grpc_method``, ``grpc_type`` and (once handled) ``grpc_code``: every
call of every kind, on every listener the interceptor is on, streams included (their duration
is the whole stream's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fractal_grpc.grpckit.interceptors import (
    Stream,
    Unary,
    _HandlerWrapper,
    final_code,
    split_method,
)

# From 1 ms to 5 min: unary calls take ms, bulk calls seconds, watch streams minutes.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _DefaultRegistry(Collector):
    """prometheus_client's process-wide registry, served with a service's own."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class ServiceMetrics:
    """The metrics of one service process (``service``: api, runner, collector)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_DefaultRegistry())
        rpc = ("grpc_service", "grpc_method", "grpc_type")
        self.rpc_started = Counter(
            "fractal_grpc_server_started",
            "RPCs started on the server.",
            rpc,
            registry=self.registry,
        )
        self.rpc_handled = Counter(
            "fractal_grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*rpc, "grpc_code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "fractal_grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream's whole duration).",
            (*rpc, "grpc_code"),
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.nats_delivered = Counter(
            "fractal_nats_messages_handled",
            "JetStream messages handled by a durable consumer, by outcome (ack or nak).",
            ("consumer", "outcome"),
            registry=self.registry,
        )
        self.nats_redelivered = Counter(
            "fractal_nats_redeliveries",
            "JetStream messages delivered again (delivery count above one) to a consumer.",
            ("consumer",),
            registry=self.registry,
        )
        self.outbox_unsent = Gauge(
            "fractal_outbox_unsent_rows",
            "Outbox rows not yet published to NATS (at the relay's last sweep).",
            registry=self.registry,
        )
        self.outbox_oldest_unsent = Gauge(
            "fractal_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished outbox row at the relay's last sweep (0: none).",
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "fractal_outbox_published",
            "Outbox rows published to NATS.",
            registry=self.registry,
        )
        self.outbox_lag = Histogram(
            "fractal_outbox_publish_lag_seconds",
            "Time from an outbox row's commit to its publication on NATS.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)

    def text(self) -> str:
        """The registry in the Prometheus text format (what the endpoint answers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


class MetricsInterceptor(_HandlerWrapper):
    """Counts and times every call; outside ``ErrorInterceptor``, so the code is the one the
    client gets."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def _labels(self, method: str, kind: str) -> tuple[str, str, str]:
        service, name = split_method(method)
        return service, name, kind

    def _done(self, labels: tuple[str, str, str], start: float, code: grpc.StatusCode) -> None:
        m = self.metrics
        m.rpc_handled.labels(*labels, code.name).inc()
        m.rpc_seconds.labels(*labels, code.name).observe(time.perf_counter() - start)

    def _unary(self, method: str, inner: Unary, kind: str) -> Unary:
        labels = self._labels(method, kind)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.metrics.rpc_started.labels(*labels).inc()
            start = time.perf_counter()
            try:
                result = await inner(request, context)
            except BaseException as exc:
                self._done(labels, start, final_code(context, exc))
                raise
            self._done(labels, start, final_code(context, None))
            return result

        return run

    def _stream(self, method: str, inner: Stream, kind: str) -> Stream:
        labels = self._labels(method, kind)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self.metrics.rpc_started.labels(*labels).inc()
            start = time.perf_counter()
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                self._done(labels, start, final_code(context, exc))
                raise
            self._done(labels, start, final_code(context, None))

        return run

    def around_unary(self, method: str, inner: Unary) -> Unary:
        return self._unary(method, inner, "unary")

    def around_stream(self, method: str, inner: Stream) -> Stream:
        return self._stream(method, inner, "server_stream")

    def around_stream_unary(self, method: str, inner: Unary) -> Unary:
        return self._unary(method, inner, "client_stream")

    def around_stream_stream(self, method: str, inner: Stream) -> Stream:
        return self._stream(method, inner, "bidi_stream")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """The HTTP endpoint (any path answers the metrics, ``/metrics`` by convention) on its own
    thread, so a busy event loop does not stop a scrape."""

    def __init__(self, address: str, metrics: ServiceMetrics) -> None:
        self.address = address
        self.metrics = metrics
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen; an address already in use raises OSError."""
        host, port = split_address(self.address)
        self._server, self._thread = start_http_server(port, host, self.metrics.registry)
        self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
