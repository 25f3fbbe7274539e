"""The runner process: run bookkeeping in PostgreSQL, job commands from NATS, one channel to
api, and a gRPC server with health and reflection only."""

from __future__ import annotations

import logging

import grpc.aio

from fractal.events.v1 import job_events_pb2
from fractal_grpc.auth.tokens import ServiceTokenSource
from fractal_grpc.db import make_engine, make_sessionmaker
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.grpckit.server import GrpcServer
from fractal_grpc.settings import RunnerSettings
from fractal_runner.api_client import JobExecutionClient, open_channel
from fractal_runner.jobs import JobScheduler, RunStore

log = logging.getLogger("fractal.runner")

SUBMIT_DURABLE = "runner-submit"
STOP_DURABLE = "runner-stop"


class RunnerApp:
    """``start()`` connects everything, resumes unfinished runs and starts consuming;
    ``stop()`` stops consuming, interrupts running jobs (killing their task processes, leaving
    their runs unfinished for the next start) and closes the connections."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.sessions = make_sessionmaker(self.engine)
        self.subjects = Subjects(settings.nats_prefix)
        self.tokens = ServiceTokenSource(settings.service_private_key_pem(), service="runner")
        self.server = GrpcServer(settings.runner_address)
        self.channel: grpc.aio.Channel | None = None
        self.bus: EventBus | None = None
        self.scheduler: JobScheduler | None = None

    async def start(self) -> int:
        s = self.settings
        self.channel = open_channel(s.api_url)
        api = JobExecutionClient(self.channel, self.tokens)
        self.scheduler = JobScheduler(
            RunStore(self.sessions),
            api,
            max_jobs=s.runner_max_jobs,
            backend=s.runner_backend,
            local_config_file=s.local_config_file,
        )
        self.bus = await EventBus.connect(s.nats_url, self.subjects, name="fractal-runner")
        resumed = await self.scheduler.resume()
        if resumed:
            log.info("resumed %d unfinished run(s)", len(resumed))
        self.bus.consume(self.subjects.job_submit, SUBMIT_DURABLE, self._on_submit)
        self.bus.consume(self.subjects.job_stop, STOP_DURABLE, self._on_stop)
        return await self.server.start()

    async def _on_submit(self, data: bytes) -> None:
        assert self.scheduler is not None
        command = job_events_pb2.JobSubmitted.FromString(data)
        log.info("job %s: submitted", command.job_id)
        await self.scheduler.submit(command.job_id)

    async def _on_stop(self, data: bytes) -> None:
        assert self.scheduler is not None
        command = job_events_pb2.JobStopRequested.FromString(data)
        await self.scheduler.stop(command.job_id)

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        if self.scheduler is not None:
            await self.scheduler.close()
        await self.server.stop(self.settings.grace_seconds)
        if self.channel is not None:
            await self.channel.close()
        await self.engine.dispose()
