"""The runner process: run bookkeeping in PostgreSQL, job commands from NATS, one channel to
api, and a gRPC server with health, reflection and the job-folder service api reads job logs and
downloads from (``fractal_runner.job_folders``, api's service tokens only).

Safe to run as several replicas: submit and stop commands are work-queue consumers (one replica
gets each), runs are executed under leases (``fractal_runner.leases``), and every replica also
receives stop commands as a broadcast (a plain NATS subscription on the same subject), so the
replica executing the job stops it whichever replica got the command.

Health answers NOT_SERVING until the runner has connected to NATS and reached api
(``fractal_runner.readiness``), SERVING from then on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc.aio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal.events.v1 import job_events_pb2
from fractal_grpc import logs
from fractal_grpc.auth.tokens import (
    ServiceTokenSource,
)
from fractal_grpc.db import make_engine, make_sessionmaker
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.grpckit.tracing import Tracing
from fractal_grpc.observability import Observability
from fractal_grpc.settings import RunnerSettings, SettingsError
from fractal_grpc.ssh import target_of
from fractal_runner import job_folders
from fractal_runner.api_client import JobExecutionClient, open_channel
from fractal_runner.leases import Instance, LeaseConfig
from fractal_runner.metrics import RunnerMetrics
from fractal_runner.readiness import wait_for_api
from fractal_runner.run_store import RunStore
from fractal_runner.scheduler import JobScheduler
from fractal_runner.slurm.backend import SlurmSshBackend, SlurmSudoBackend
from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.job_records import SlurmJobRecords
from fractal_runner.taskproc import LocalExecutor
from fractal_runner.taskproc.ledger import LEDGER_FOLDER

log = logging.getLogger("fractal.runner")

SUBMIT_DURABLE = "runner-submit"
STOP_DURABLE = "runner-stop"


class RunnerApp:
    """``start()`` connects everything, resumes orphaned runs and starts consuming;
    ``stop()`` stops consuming, interrupts running jobs (killing their task processes, leaving
    their runs unfinished and their leases released, for another replica or the next start)
    and closes the connections."""

    def __init__(
        self,
        settings: RunnerSettings,
        *,
        lease: LeaseConfig | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.obs = Observability.of(
            settings,
            "runner",
            settings.runner_metrics_address,
            variable="FRACTAL_RUNNER_METRICS_ADDRESS",
            tracing=tracing,
        )
        self.metrics = RunnerMetrics(self.obs.metrics.registry)
        self.lease = lease or LeaseConfig.of(settings.runner_lease_seconds)
        self.instance = Instance.current()
        self.engine = make_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.sessions = make_sessionmaker(self.engine)
        self.subjects = Subjects(settings.nats_prefix)
        self.tokens = ServiceTokenSource(settings.service_private_key_pem(), service="runner")
        # Health, reflection and JobFolderService (api's tokens only).
        self.server = job_folders.build_server(settings, self.obs.server_interceptors())
        #: The SLURM backend's process-wide state (pollers per user), None for local.
        self.slurm: SlurmSudoBackend | None = None
        if settings.runner_backend in ("slurm_sudo", "slurm_ssh"):
            self.slurm = _slurm_backend(settings, self.sessions)
            try:
                self.slurm.check_config()
            except SlurmConfigError as exc:
                raise SettingsError(f"FRACTAL_SLURM_CONFIG_FILE: {exc}") from None
        self.channel: grpc.aio.Channel | None = None
        self.bus: EventBus | None = None
        self.scheduler: JobScheduler | None = None
        self._stop_broadcast: Subscription | None = None
        self._released_notices: Subscription | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._readiness: asyncio.Task[None] | None = None

    async def start(self) -> int:
        s = self.settings
        log.info(
            "runner instance %s (lease %.1fs, renewed every %.1fs)",
            self.instance.owner,
            self.lease.lease_seconds,
            self.lease.renew_seconds,
        )
        self.obs.start()
        self.channel = open_channel(
            s.api_url, s.api_max_message_bytes, interceptors=self.obs.client_interceptors()
        )
        api = JobExecutionClient(
            self.channel,
            self.tokens,
            working_base_dir=s.runner_working_base_dir,
            on_finished=self.metrics.job_finished,
        )
        self.scheduler = JobScheduler(
            RunStore(self.sessions, instance=self.instance, lease=self.lease),
            api,
            max_jobs=s.runner_max_jobs,
            backend=s.runner_backend,
            local_config_file=s.local_config_file,
            ledger_dir=s.runner_working_base_dir / LEDGER_FOLDER,
            executor_factory=self.metrics.counted(
                LocalExecutor if self.slurm is None else self.slurm.executor
            ),
        )
        self.bus = await EventBus.connect(
            s.nats_url,
            self.subjects,
            name="fractal-runner",
            metrics=self.obs.metrics,
            tracing=self.obs.tracing,
        )
        self._stop_broadcast = await self.bus.nc.subscribe(
            self.subjects.job_stop, cb=self._on_stop_broadcast
        )
        self._released_notices = await self.bus.nc.subscribe(
            self.subjects.runner_released, cb=self._on_released
        )
        resumed = await self.scheduler.start()
        if resumed:
            log.info("resumed %d unfinished run(s)", len(resumed))
        self.bus.consume(self.subjects.job_submit, SUBMIT_DURABLE, self._on_submit)
        self.bus.consume(self.subjects.job_stop, STOP_DURABLE, self._on_stop)
        port = await self.server.start(serving=False)
        self._readiness = asyncio.create_task(self._become_ready(self.channel, s.api_url))
        return port

    async def _become_ready(self, channel: grpc.aio.Channel, api_url: str) -> None:
        await wait_for_api(channel, api_url)
        await self.server.set_serving()

    async def _on_released(self, msg: Msg) -> None:
        if self.scheduler is not None and msg.data.decode() != self.instance.owner:
            self.scheduler.sweep_soon()

    async def _on_submit(self, data: bytes) -> None:
        assert self.scheduler is not None
        command = job_events_pb2.JobSubmitted.FromString(data)
        with logs.log_context(job_id=command.job_id):
            log.info("job %s: submitted", command.job_id)
            await self.scheduler.submit(command.job_id)

    async def _on_stop(self, data: bytes) -> None:
        assert self.scheduler is not None
        command = job_events_pb2.JobStopRequested.FromString(data)
        await self.scheduler.stop(command.job_id)

    async def _on_stop_broadcast(self, msg: Msg) -> None:
        # In a task of its own: a stop waits for processes to die, and must not hold up the
        # subscription's next message.
        command = job_events_pb2.JobStopRequested.FromString(msg.data)
        task = asyncio.create_task(self._stop_here(command.job_id))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_here(self, job_id: int) -> None:
        assert self.scheduler is not None
        try:
            await self.scheduler.stop_local(job_id)
        except Exception:  # noqa: BLE001 - the durable command and the between-task check remain
            log.exception("job %s: stop broadcast not handled", job_id)

    async def stop(self) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
        if self.bus is not None:
            # No new commands, nor stop broadcasts, from here on.
            await self.bus.stop_consuming()
            for sub in (self._stop_broadcast, self._released_notices):
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
        for task in list(self._stopping):
            task.cancel()
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.scheduler is not None:
            released = await self.scheduler.close()
            if released and self.bus is not None:
                # Best effort: the other replicas sweep now instead of at their next sweep.
                try:
                    await self.bus.nc.publish(
                        self.subjects.runner_released, self.instance.owner.encode()
                    )
                    await self.bus.nc.flush(timeout=2)
                except Exception:  # noqa: BLE001
                    log.warning("could not tell the other runners about the released runs")
        if self.slurm is not None:
            await self.slurm.close()
        if self.bus is not None:
            await self.bus.close()
        await self.server.stop(self.settings.grace_seconds)
        if self.channel is not None:
            await self.channel.close()
        await self.engine.dispose()
        self.obs.stop()


def _slurm_backend(
    settings: RunnerSettings, sessions: async_sessionmaker[AsyncSession]
) -> SlurmSudoBackend:
    """The backend of FRACTAL_RUNNER_BACKEND slurm_sudo or slurm_ssh (settings checked)."""
    assert settings.slurm_config_file is not None  # checked by RunnerSettings
    assert settings.slurm_worker_python is not None
    options: dict[str, Any] = {
        "config_file": settings.slurm_config_file,
        "poll_interval": settings.slurm_poll_interval,
        "worker_python": settings.slurm_worker_python,
        "worker_pythonpath": settings.slurm_worker_pythonpath,
        "cluster": settings.slurm_cluster,
        "records": SlurmJobRecords(
            sessions,
            deployment=settings.runner_deployment_id or settings.nats_prefix,
            cluster=settings.slurm_cluster,
        ),
        "lost_after": settings.slurm_lost_after_seconds,
    }
    if settings.runner_backend == "slurm_sudo":
        return SlurmSudoBackend(**options)
    assert settings.slurm_ssh_working_base_dir is not None
    return SlurmSshBackend(
        target=target_of(settings), remote_base_dir=settings.slurm_ssh_working_base_dir, **options
    )
