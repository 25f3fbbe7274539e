"""A service's observability in one object: its metrics (and their HTTP endpoint), its tracer,
and the interceptors that feed them. Wiring a service is::

    self.obs = Observability.of(settings, "collector", settings.collector_metrics_address,
                                variable="FRACTAL_COLLECTOR_METRICS_ADDRESS")
    interceptors = [*self.obs.server_interceptors(), ErrorInterceptor(), auth, ...]
    ...  # start(): self.obs.start()   stop(): self.obs.stop()

with ``metrics=self.obs.metrics, tracing=self.obs.tracing`` given to ``EventBus.connect`` (and
``OutboxRelay``), and ``self.obs.client_interceptors()`` to the channels it calls other
services on. Logging itself is configured per process (``fractal_grpc.logs.configure``, done by
``service_main``).
"""

from __future__ import annotations

import grpc.aio

from fractal_grpc.grpckit.interceptors import LoggingInterceptor
from fractal_grpc.grpckit.metrics import MetricsServer, ServiceMetrics
from fractal_grpc.grpckit.tracing import Tracing
from fractal_grpc.settings import CommonSettings, SettingsError


class Observability:
    def __init__(
        self,
        service: str,
        *,
        metrics_address: str = "",
        variable: str = "",
        tracing: Tracing | None = None,
    ) -> None:
        self.service = service
        self.metrics = ServiceMetrics(service)
        self.tracing = tracing or Tracing.disabled()
        self.metrics_address = metrics_address
        self.variable = variable
        self.server: MetricsServer | None = None
        self._logging = LoggingInterceptor()

    @classmethod
    def of(
        cls,
        settings: CommonSettings,
        service: str,
        metrics_address: str,
        *,
        variable: str,
        tracing: Tracing | None = None,
    ) -> Observability:
        """From settings: tracing on when ``FRACTAL_OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or the
        given ``tracing``, for tests)."""
        if tracing is None:
            tracing = Tracing.from_endpoint(service, settings.otel_exporter_otlp_endpoint)
        return cls(service, metrics_address=metrics_address, variable=variable, tracing=tracing)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Tracing, metrics and the call's log line, to put before ``ErrorInterceptor`` (they
        need the status code the client gets). The same objects on every listener."""
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.tracing.enabled:
            interceptors.append(self.tracing.server_interceptor())
        interceptors += [self.metrics.interceptor(), self._logging]
        return interceptors

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return self.tracing.client_interceptors()

    @property
    def metrics_port(self) -> int:
        """The metrics endpoint's port (0: none)."""
        return self.server.port if self.server is not None else 0

    def start(self) -> None:
        """Open the metrics endpoint (none when the address is empty)."""
        if not self.metrics_address or self.server is not None:
            return
        server = MetricsServer(self.metrics_address, self.metrics)
        try:
            server.start()
        except OSError as exc:
            raise SettingsError(
                f"{self.variable or 'metrics address'}: cannot listen on "
                f"{self.metrics_address}: {exc.strerror or exc}"
            ) from None
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.tracing.shutdown()
