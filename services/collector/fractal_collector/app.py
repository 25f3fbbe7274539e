"""The collector process: collection commands from NATS, one channel to api's internal
listener, and a gRPC server with health and reflection.

A command is acked once its collection has ended (or was found ended): a collector that dies
mid-installation leaves it unacked, so JetStream redelivers it (after ``ack_wait``, twice the
lease), and the next collector claims the collection once the dead one's lease has expired,
removes the dead attempt's folder, and starts again. While a live collector holds it, a
redelivered command is handed back (nak) to come again later. So two collectors never install
one collection at once, and none is left INSTALLING. One collector installs one collection at
a time (installers are busy processes already); more at once: more replicas."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from fractal.events.v1 import collection_events_pb2
from fractal_collector.api_client import RegistrationClient
from fractal_collector.collect import CollectorConfig, handle
from fractal_collector.hosts import Host, LocalHost, SshHost
from fractal_collector.installer import command_env
from fractal_collector.metrics import CollectorMetrics
from fractal_grpc.auth.tokens import ServiceTokenSource
from fractal_grpc.client import open_channel
from fractal_grpc.collection import commands
from fractal_grpc.events.bus import EventBus, Subjects
from fractal_grpc.grpckit.interceptors import ErrorInterceptor
from fractal_grpc.grpckit.server import GrpcServer
from fractal_grpc.grpckit.tracing import Tracing
from fractal_grpc.observability import Observability
from fractal_grpc.settings import CollectorSettings, SettingsError
from fractal_grpc.ssh import SshConnection, target_of

log = logging.getLogger("fractal.collector")

SUBMIT_DURABLE = "collector-submit"


def find_uv(configured: str | None) -> str:
    """The uv executable: the configured one, the one beside this Python, or PATH's."""
    if configured:
        return configured
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        raise SettingsError("FRACTAL_COLLECTOR_UV: uv is not installed; set its path")
    return found


def _uv(settings: CollectorSettings) -> str:
    """The uv to run: over SSH the remote one (looked for there), else this machine's."""
    if settings.over_ssh:
        return settings.collector_ssh_uv
    return find_uv(settings.collector_uv) if settings.collector_installer == "uv" else "uv"


def collector_config(
    settings: CollectorSettings,
    metrics: CollectorMetrics | None = None,
    connection: SshConnection | None = None,
) -> CollectorConfig:
    """What a collection needs; with slurm_ssh its host is the login node (over
    ``connection``, the service's one shared connection)."""
    installer = commands.Installer(
        kind=settings.collector_installer,
        uv=_uv(settings),
        pip_max_version=settings.pip_max_version,
        index=commands.IndexOptions(
            index_url=settings.collector_index_url,
            find_links=settings.find_links(),
            no_index=settings.collector_no_index,
        ),
    )
    cache = settings.collector_uv_cache_dir
    host: Host = LocalHost(command_env(str(cache) if cache else None))
    tasks_dir = settings.tasks_dir
    if settings.over_ssh:
        assert settings.slurm_ssh_tasks_dir is not None  # checked by CollectorSettings
        tasks_dir = settings.slurm_ssh_tasks_dir
        host = SshHost(
            connection or SshConnection(target_of(settings)),
            tasks_dir=str(tasks_dir),
            command_seconds=settings.collector_ssh_command_seconds,
        )
    return CollectorConfig(
        tasks_dir=tasks_dir,
        pythons=settings.tasks_pythons(),
        default_python=settings.tasks_python_default(),
        installer=installer,
        host=host,
        on_installer=metrics.installer_ran if metrics is not None else None,
    )


class CollectorApp:
    def __init__(self, settings: CollectorSettings, *, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.obs = Observability.of(
            settings,
            "collector",
            settings.collector_metrics_address,
            variable="FRACTAL_COLLECTOR_METRICS_ADDRESS",
            tracing=tracing,
        )
        self.metrics = CollectorMetrics(self.obs.metrics.registry)
        #: The shared connection to the login node (slurm_ssh), opened at the first command.
        self.ssh = SshConnection(target_of(settings)) if settings.over_ssh else None
        self.config = collector_config(settings, self.metrics, self.ssh)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.subjects = Subjects(settings.nats_prefix)
        self.tokens = ServiceTokenSource(settings.service_private_key_pem(), service="collector")
        # Health and reflection only; counted, traced and logged like every listener.
        self.server = GrpcServer(
            settings.collector_address, [*self.obs.server_interceptors(), ErrorInterceptor()]
        )
        self.channel = open_channel(
            settings.api_url,
            [],
            max_message_bytes=settings.api_max_message_bytes,
            interceptors=self.obs.client_interceptors(),
        )
        self.api = RegistrationClient(
            self.channel,
            self.tokens,
            owner=self.owner,
            lease_seconds=settings.collector_lease_seconds,
            on_finished=self.metrics.collection_finished,
        )
        self.bus: EventBus | None = None

    async def start(self) -> int:
        where = f" on {self.config.host.label}" if self.config.host.remote else ""
        log.info(
            "collector %s: environments in %s%s, installer %s",
            self.owner,
            self.config.tasks_dir,
            where,
            self.config.installer.kind,
        )
        self.obs.start()
        self.bus = await EventBus.connect(
            self.settings.nats_url,
            self.subjects,
            name="fractal-collector",
            metrics=self.obs.metrics,
            tracing=self.obs.tracing,
        )
        self.bus.consume(
            self.subjects.collection_submit,
            SUBMIT_DURABLE,
            self._on_submit,
            ack_wait=2 * self.settings.collector_lease_seconds,
        )
        return await self.server.start()

    async def _on_submit(self, data: bytes) -> None:
        command = collection_events_pb2.CollectionSubmitted.FromString(data)
        log.info("collection %s: submitted", command.collection_id)
        await handle(self.api, self.config, command.collection_id)

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        await self.server.stop(self.settings.grace_seconds)
        await self.channel.close()
        if self.ssh is not None:
            await self.ssh.close()
        self.obs.stop()
