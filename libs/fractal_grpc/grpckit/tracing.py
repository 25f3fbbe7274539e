"""Optional OpenTelemetry tracing of gRPC calls, across services and through NATS messages.

Off unless ``FRACTAL_OTEL_EXPORTER_OTLP_ENDPOINT`` is set (then spans go to that OTLP/gRPC
collector, e.g. ``http://otel-collector:4317``). Each service has its own ``TracerProvider``
(its ``service.name`` resource); nothing is installed globally, so services sharing a process
(the tests) keep their identities.

The trace context travels as W3C ``traceparent``/``tracestate``: in gRPC metadata (client
interceptor on the services' internal channels, server interceptor on every listener) and in
NATS message headers (the outbox stores it with each row, the relay sends it, the consumer
continues the trace). A disabled :class:`Tracing` does nothing and costs one attribute test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.aio
from opentelemetry.context import attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fractal_grpc.grpckit.interceptors import (
    Stream,
    Unary,
    _HandlerWrapper,
    final_code,
    split_method,
)

_PROPAGATOR = TraceContextTextMapPropagator()
# Tasks that end client spans, kept until done (asyncio holds only weak references).
_ending: set[asyncio.Future[None]] = set()
TRACE_HEADERS = ("traceparent", "tracestate")


class Tracing:
    """A service's tracer, or nothing (``provider`` None: tracing off)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("fractal_grpc") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(None)

    @classmethod
    def with_exporter(cls, service: str, exporter: SpanExporter, *, batch: bool = True) -> Tracing:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": f"fractal-{service}"}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def from_endpoint(cls, service: str, endpoint: str | None) -> Tracing:
        """Spans exported over OTLP/gRPC to ``endpoint``; tracing off when it is empty."""
        if not endpoint:
            return cls.disabled()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = endpoint.startswith("http://")
        return cls.with_exporter(service, OTLPSpanExporter(endpoint=endpoint, insecure=insecure))

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    # --- propagation ----------------------------------------------------------------------

    @staticmethod
    def carrier() -> dict[str, str]:
        """The current trace context as headers (empty outside a span)."""
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        return headers

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span | None]:
        """A current span (child of ``parent`` headers when given, else of the current one)."""
        if self.tracer is None:
            yield None
            return
        ctx = _PROPAGATOR.extract(dict(parent)) if parent is not None else None
        with self.tracer.start_as_current_span(
            name, context=ctx, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span

    # --- gRPC ---------------------------------------------------------------------------

    def server_interceptor(self) -> TracingInterceptor:
        return TracingInterceptor(self)

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """For a channel: a CLIENT span per call, its context sent in the metadata."""
        if not self.enabled:
            return []
        return [_UnaryUnaryClient(self), _UnaryStreamClient(self)]


def _rpc_attributes(method: str) -> dict[str, str]:
    service, name = split_method(method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _end(span: Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


#: Not traced: probes and tooling, which would bury the traces of real work.
UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class TracingInterceptor(_HandlerWrapper):
    """A SERVER span per call (health checks and reflection aside), child of the caller's
    ``traceparent`` metadata; current while the servicer runs (so its own calls and NATS
    messages continue the trace)."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self.tracing = tracing

    def _parent(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        return {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in TRACE_HEADERS and isinstance(value, str)
        }

    def around_unary(self, method: str, inner: Unary) -> Unary:
        tracer = self.tracing.tracer
        if tracer is None or method.startswith(UNTRACED_PREFIXES):
            return inner
        attributes = _rpc_attributes(method)
        name = method.lstrip("/")

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = _PROPAGATOR.extract(self._parent(context))
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = await inner(request, context)
                except BaseException as exc:
                    _end(span, final_code(context, exc))
                    raise
                _end(span, final_code(context, None))
                return result

        return run

    def around_stream(self, method: str, inner: Stream) -> Stream:
        tracer = self.tracing.tracer
        if tracer is None or method.startswith(UNTRACED_PREFIXES):
            return inner
        attributes = _rpc_attributes(method)
        name = method.lstrip("/")

        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            parent = _PROPAGATOR.extract(self._parent(context))
            span = tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
            ctx = set_span_in_context(span, parent)
            code = grpc.StatusCode.OK
            iterator = inner(request, context).__aiter__()
            try:
                while True:
                    # The span is current while the servicer computes each message, not while
                    # the stream waits at a yield (another context may run then).
                    token = attach(ctx)
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        detach(token)
                    yield item
            except BaseException as exc:
                code = final_code(context, exc)
                raise
            finally:
                # The inner wrappers finish now (their log line, their metrics), not when the
                # garbage collector gets to them.
                with contextlib.suppress(Exception):
                    await iterator.aclose()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.OK:
                    code = final_code(context, None)
                _end(span, code)
                span.end()

        return run


def _with_trace_metadata(
    details: grpc.aio.ClientCallDetails, headers: Mapping[str, str]
) -> grpc.aio.ClientCallDetails:
    metadata = [(k, v) for k, v in (details.metadata or ()) if k not in TRACE_HEADERS]
    metadata.extend(headers.items())
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _ClientBase:
    def __init__(self, tracing: Tracing) -> None:
        assert tracing.tracer is not None
        self.tracer = tracing.tracer

    async def _call(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span = self.tracer.start_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method)
        )
        started = time.monotonic()
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=set_span_in_context(span))
        try:
            call = await continuation(_with_trace_metadata(details, headers), request)
        except BaseException:
            span.set_status(Status(StatusCode.ERROR, "not started"))
            span.end()
            raise

        async def finish(finished: Any) -> None:
            try:
                code = await finished.code()  # the call is over: answers at once
            except Exception:  # noqa: BLE001 - a cancelled call may have no code to read
                code = grpc.StatusCode.CANCELLED
            _end(span, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN)
            span.set_attribute("rpc.duration_ms", (time.monotonic() - started) * 1e3)
            span.end()

        def done(finished: Any) -> None:
            task = asyncio.ensure_future(finish(finished))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

        call.add_done_callback(done)
        return call


class _UnaryUnaryClient(_ClientBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await self._call(continuation, client_call_details, request)


class _UnaryStreamClient(_ClientBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await self._call(continuation, client_call_details, request)
