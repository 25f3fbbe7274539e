"""NATS JetStream: the command and event streams, publishing, and durable pull consumers.

Commands (``{prefix}.cmd.>``) live in a work-queue stream: a command sent while its consumer is
down waits for it, and each is handled once. Events (``{prefix}.evt.>``) live in a limits stream
that watchers read. Every deployment (and every test run) has its own prefix, hence its own
streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from fractal_grpc.grpckit.metrics import ServiceMetrics
    from fractal_grpc.grpckit.tracing import Tracing

log = logging.getLogger("fractal.events")


@dataclass(frozen=True)
class Subjects:
    prefix: str

    @property
    def command_stream(self) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_CMD"

    @property
    def event_stream(self) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_EVT"

    @property
    def job_submit(self) -> str:
        return f"{self.prefix}.cmd.job.submit"

    @property
    def job_stop(self) -> str:
        return f"{self.prefix}.cmd.job.stop"

    def job_event(self, job_id: int) -> str:
        return f"{self.prefix}.evt.job.{job_id}"

    @property
    def collection_submit(self) -> str:
        return f"{self.prefix}.cmd.collection.submit"

    def collection_event(self, collection_id: int) -> str:
        return f"{self.prefix}.evt.collection.{collection_id}"

    @property
    def runner_released(self) -> str:
        """Core NATS only (outside the streams): a runner released runs on its way out."""
        return f"{self.prefix}.runner.released"


Handler = Callable[[bytes], Awaitable[None]]


class EventBus:
    """A NATS connection with JetStream, bound to one deployment's subjects.

    With ``metrics``, consumers count what they handle and what JetStream redelivers; with
    ``tracing``, a consumer continues the trace whose context a message's headers carry."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.metrics = metrics
        self.tracing = tracing
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        subjects: Subjects,
        *,
        name: str,
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> EventBus:
        nc = await nats.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5
        )
        bus = cls(nc, subjects, metrics=metrics, tracing=tracing)
        await bus.ensure_streams()
        return bus

    async def ensure_streams(self) -> None:
        s = self.subjects
        wanted = [
            StreamConfig(
                name=s.command_stream,
                subjects=[f"{s.prefix}.cmd.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=600.0,
            ),
            StreamConfig(
                name=s.event_stream,
                subjects=[f"{s.prefix}.evt.>"],
                retention=RetentionPolicy.LIMITS,
                max_age=7 * 24 * 3600.0,
                duplicate_window=600.0,
            ),
        ]
        for config in wanted:
            try:
                await self.js.stream_info(str(config.name))
            except NotFoundError:
                await self.js.add_stream(config)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish to JetStream; ``headers`` (a trace context) travel with the message."""
        sent = dict(headers or {})
        if msg_id:
            sent["Nats-Msg-Id"] = msg_id
        await self.js.publish(subject, payload, headers=sent or None)

    def consume(
        self, subject: str, durable: str, handler: Handler, *, ack_wait: float = 60.0
    ) -> None:
        """Run ``handler`` for each message of a durable pull consumer, in the background.

        The message is acked after the handler returns (its work is durable by then); a handler
        error naks it with a delay, so JetStream redelivers it.
        """
        if self.metrics is not None:  # shown at 0 from the start, not from the first one
            self.metrics.nats_redelivered.labels(durable)
            for outcome in ("ack", "nak"):
                self.metrics.nats_delivered.labels(durable, outcome)
        self._tasks.append(asyncio.create_task(self._consume(subject, durable, handler, ack_wait)))

    async def _consume(self, subject: str, durable: str, handler: Handler, ack_wait: float) -> None:
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,
            filter_subject=subject,
        )
        sub = await self.js.pull_subscribe(
            subject, durable=durable, stream=self.subjects.command_stream, config=config
        )
        while True:
            try:
                msgs = await sub.fetch(batch=1, timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - connection trouble: retry after a pause
                log.warning("fetch on %s failed; retrying", subject, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._handle(msg, handler, durable)

    async def _handle(self, msg: Msg, handler: Handler, durable: str = "") -> None:
        self._count_delivery(msg, durable)
        try:
            if self.tracing is not None and self.tracing.enabled:
                with self.tracing.span(
                    f"{msg.subject} process",
                    kind=SpanKind.CONSUMER,
                    parent=msg.headers or {},
                    attributes={"messaging.system": "nats", "messaging.consumer": durable},
                ):
                    await handler(msg.data)
            else:
                await handler(msg.data)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - redelivered later
            log.exception("handling %s failed; will be redelivered", msg.subject)
            self._count_outcome(durable, "nak")
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        await msg.ack()
        self._count_outcome(durable, "ack")

    def _count_delivery(self, msg: Msg, durable: str) -> None:
        if self.metrics is None:
            return
        try:
            delivered = msg.metadata.num_delivered
        except Exception:  # noqa: BLE001 - not a JetStream message: nothing to count
            return
        if delivered is not None and delivered > 1:
            self.metrics.nats_redelivered.labels(durable).inc()

    def _count_outcome(self, durable: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.nats_delivered.labels(durable, outcome).inc()

    async def stop_consuming(self) -> None:
        """Stop the consumers; the connection stays usable for publishing."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def close(self) -> None:
        await self.stop_consuming()
        # close(), not drain(): every consumer acks only after its work is durable, so an
        # unacked message is simply redelivered; and draining a pull subscription can wait
        # for its whole drain timeout.
        with contextlib.suppress(Exception):
            await self.nc.close()
