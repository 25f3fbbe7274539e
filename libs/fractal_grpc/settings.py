"""Settings from environment variables, one class per service on a shared base.

Names follow the reference where the meaning is the same (``FRACTAL_RUNNER_BACKEND``, …).
A bad value stops the service at start with a message that names the variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Self, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fractal_grpc.logs import LOG_FORMATS

#: Where each service serves its Prometheus metrics unless told otherwise (loopback: set
#: 0.0.0.0:PORT to be scraped from elsewhere; an empty value turns the endpoint off).
DEFAULT_METRICS_ADDRESSES = {
    "api": "127.0.0.1:9451",
    "runner": "127.0.0.1:9452",
    "collector": "127.0.0.1:9453",
}

# The largest request api accepts: fits an AddImages of 100,000 images (~10 MB) with room.
DEFAULT_API_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

#: ``FRACTAL_RUNNER_BACKEND`` values, shared by api (submit-time checks) and the runner. The
#: reference's ``slurm`` is accepted as a synonym of ``slurm_sudo`` (the same backend: sudo -u).
RUNNER_BACKENDS = ("local", "slurm_sudo", "slurm_ssh")
_BACKEND_SYNONYMS = {"slurm": "slurm_sudo"}
SLURM_BACKENDS = frozenset({"slurm_sudo", "slurm_ssh"})


def _runner_backend(value: str, allowed: tuple[str, ...]) -> str:
    value = _BACKEND_SYNONYMS.get(value, value)
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return value


def _metrics_address(value: str) -> str:
    value = value.strip()
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port (port 0: any free port), or empty for no endpoint")
    return value


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class CommonSettings(BaseSettings):
    """What every service needs: the database, NATS and the token keys."""

    model_config = SettingsConfigDict(env_prefix="FRACTAL_", extra="ignore")

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/fractal",
        description="SQLAlchemy URL of PostgreSQL, with the asyncpg driver.",
    )
    database_pool_size: int = Field(default=10, ge=1)
    nats_url: str = "nats://127.0.0.1:4222"
    # Prefix of the NATS subjects and stream names, so several deployments (or test runs)
    # can share one NATS server.
    nats_prefix: str = Field(default="fractal", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    # Public key that verifies service tokens (aud=fractal-internal).
    service_public_key_file: Path | None = None
    service_public_key: str | None = None
    log_level: str = "INFO"
    # "text" (one readable line per record) or "json" (one object per line, for collectors).
    log_format: str = "text"
    # OTLP/gRPC endpoint of a trace collector (e.g. http://otel-collector:4317): tracing is on
    # only when set.
    otel_exporter_otlp_endpoint: str | None = None
    grace_seconds: float = Field(default=5.0, ge=0)
    # The largest message api receives or sends; the runner's channel to api uses it too.
    api_max_message_bytes: int = Field(
        default=DEFAULT_API_MAX_MESSAGE_BYTES, ge=64 * 1024, le=1024 * 1024 * 1024
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql:// or postgresql+asyncpg:// URL")
        return value

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        value = value.lower()
        if value not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value

    def service_public_key_pem(self) -> str:
        return _read_key(
            self.service_public_key, self.service_public_key_file, "SERVICE_PUBLIC_KEY"
        )


def _read_key(value: str | None, path: Path | None, name: str) -> str:
    if value:
        return value
    if path is not None:
        try:
            return path.read_text()
        except OSError as exc:
            raise SettingsError(f"FRACTAL_{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    raise SettingsError(f"FRACTAL_{name} or FRACTAL_{name}_FILE must be set")


#: The Python versions task environments may use (reference §9, FRACTAL_TASKS_PYTHON_3_X).
TASKS_PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


class TasksPythonSettings(BaseSettings):
    """The interpreters task environments are created with (api checks requests against them;
    the collector uses them). Reference §9: when no default version is set, the default is the
    service's own Python and it is the only one available."""

    model_config = SettingsConfigDict(env_prefix="FRACTAL_", extra="ignore")

    tasks_python_default_version: str | None = None
    tasks_python_3_9: str | None = None
    tasks_python_3_10: str | None = None
    tasks_python_3_11: str | None = None
    tasks_python_3_12: str | None = None
    tasks_python_3_13: str | None = None

    @model_validator(mode="after")
    def _default_python(self) -> Self:
        default = self.tasks_python_default_version
        if default is not None:
            if default not in TASKS_PYTHON_VERSIONS:
                raise ValueError(
                    "FRACTAL_TASKS_PYTHON_DEFAULT_VERSION must be one of "
                    + ", ".join(TASKS_PYTHON_VERSIONS)
                )
            if self.tasks_pythons().get(default) is None:
                raise ValueError(
                    f"FRACTAL_TASKS_PYTHON_{default.replace('.', '_')} must be set "
                    f"(FRACTAL_TASKS_PYTHON_DEFAULT_VERSION is {default})"
                )
        for version, path in self.tasks_pythons().items():
            if not path.startswith("/"):
                raise ValueError(
                    f"FRACTAL_TASKS_PYTHON_{version.replace('.', '_')} must be an absolute path"
                )
        return self

    def tasks_pythons(self) -> dict[str, str]:
        """Python version -> interpreter path, of the configured versions."""
        if self.tasks_python_default_version is None:
            return {f"{sys.version_info.major}.{sys.version_info.minor}": sys.executable}
        found = {
            v: getattr(self, f"tasks_python_{v.replace('.', '_')}") for v in TASKS_PYTHON_VERSIONS
        }
        return {v: path for v, path in found.items() if path}

    def tasks_python_default(self) -> str:
        return self.tasks_python_default_version or (
            f"{sys.version_info.major}.{sys.version_info.minor}"
        )


class ApiSettings(CommonSettings, TasksPythonSettings):
    """Settings of the api service."""

    api_address: str = "127.0.0.1:50051"
    # The internal listener (fractal.internal.v1.*, for the runner): keep it off public networks.
    api_internal_address: str = "127.0.0.1:50053"
    # Prometheus metrics over HTTP; empty: no endpoint.
    api_metrics_address: str = DEFAULT_METRICS_ADDRESSES["api"]
    jwt_private_key_file: Path | None = None
    jwt_private_key: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_public_key: str | None = None
    jwt_expire_seconds: int = Field(default=3600, ge=1)
    default_admin_email: str = "admin@fractal.xy"
    default_admin_password: str = Field(default="1234", min_length=4, max_length=100)
    default_admin_username: str = "admin"
    runner_backend: str = "local"
    runner_working_base_dir: Path = Path(".state/jobs")
    slurm_ssh_working_base_dir: Path | None = None
    api_submit_rate_limit: int = Field(default=2, ge=0)
    # The runner's listener (its FRACTAL_RUNNER_ADDRESS; a Service address with replicas, which
    # share the job folders' storage): job logs and folder downloads are read there.
    runner_url: str = "127.0.0.1:50052"
    # Signs page tokens; the same on every replica. Unset: derived from the JWT private key.
    page_token_secret: str | None = Field(default=None, min_length=16)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    # The largest wheel UploadAndCollect accepts.
    collection_max_wheel_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @field_validator("runner_backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _runner_backend(value, RUNNER_BACKENDS)

    @field_validator("api_metrics_address")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _metrics_address(value)

    @model_validator(mode="after")
    def _absolute_dirs(self) -> Self:
        self.runner_working_base_dir = self.runner_working_base_dir.absolute()
        return self

    def page_token_key(self) -> bytes:
        return (self.page_token_secret or self.jwt_private_key_pem()).encode()

    def jwt_private_key_pem(self) -> str:
        return _read_key(self.jwt_private_key, self.jwt_private_key_file, "JWT_PRIVATE_KEY")

    def jwt_public_key_pem(self) -> str:
        return _read_key(self.jwt_public_key, self.jwt_public_key_file, "JWT_PUBLIC_KEY")


class SlurmSshSettings(BaseSettings):
    """The cluster's login node of ``slurm_ssh`` (reference §7.6): the runner's and the
    collector's (one service user; the same FRACTAL_SLURM_SSH_* variables for both)."""

    model_config = SettingsConfigDict(env_prefix="FRACTAL_", extra="ignore")

    slurm_ssh_host: str | None = None
    slurm_ssh_port: int = Field(default=22, ge=1, le=65535)
    slurm_ssh_user: str | None = None
    slurm_ssh_private_key_path: Path | None = None
    # known_hosts with the login node's host key; unset: any host key is accepted.
    slurm_ssh_known_hosts: Path | None = None

    def missing_ssh_settings(self, *extra: str) -> list[str]:
        """The FRACTAL_SLURM_SSH_* variables slurm_ssh needs that are unset."""
        names = ("host", "user", "private_key_path", *extra)
        return [
            f"FRACTAL_SLURM_SSH_{n.upper()}"
            for n in names
            if getattr(self, f"slurm_ssh_{n}") is None
        ]


class RunnerSettings(CommonSettings, SlurmSshSettings):
    """Settings of the runner service."""

    runner_address: str = "127.0.0.1:50052"
    # Prometheus metrics over HTTP; empty: no endpoint.
    runner_metrics_address: str = DEFAULT_METRICS_ADDRESSES["runner"]
    # api's internal listener (FRACTAL_API_INTERNAL_ADDRESS).
    api_url: str = "127.0.0.1:50053"
    runner_backend: str = "local"
    runner_working_base_dir: Path = Path(".state/jobs")
    local_config_file: Path | None = None
    runner_max_jobs: int = Field(default=8, ge=1)
    # How long a replica's claim on a run lasts without renewal (renewed every third of it).
    runner_lease_seconds: float = Field(default=30.0, gt=0)
    service_private_key_file: Path | None = None
    service_private_key: str | None = None
    # The runner's own server: health, and job logs and folders for api (in chunks of 256 KiB,
    # a log of at most 1 MiB).
    runner_max_message_bytes: int = Field(default=2 * 1024 * 1024, ge=4 * 1024)
    # api's public key (the same FRACTAL_JWT_PUBLIC_KEY as api's): verifies api's tokens on the
    # runner's JobFolderService. Unset: that service refuses every call (UNAUTHENTICATED).
    jwt_public_key_file: Path | None = None
    jwt_public_key: str | None = None
    # --- SLURM backends (slurm_sudo) ---
    # The SLURM config file of reference §7.3: required, validated at start, re-read per task.
    slurm_config_file: Path | None = None
    # Seconds between two squeue calls of a (cluster, user)'s poller.
    slurm_poll_interval: float = Field(default=5.0, gt=0)
    # The Python the cluster user runs the worker module with (it must import fractal_runner,
    # or find it through FRACTAL_SLURM_WORKER_PYTHONPATH).
    slurm_worker_python: str | None = None
    # PYTHONPATH given to the worker in the job (e.g. the runner's source on a shared disk).
    slurm_worker_pythonpath: str | None = None
    # The cluster's name in the scheduler-call counter and logs.
    slurm_cluster: str = "slurm"
    # A job listed by neither squeue nor sacct this long is lost (its calls are submitted once
    # more, then failed).
    slurm_lost_after_seconds: float = Field(default=120.0, gt=0)
    # Goes into the tag (--comment) of every SLURM job, so that deployments sharing a cluster
    # never take each other's jobs for their own; default: FRACTAL_NATS_PREFIX.
    runner_deployment_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    # The remote base of the job folders ({base}/{job folder name}), the service user's.
    slurm_ssh_working_base_dir: Path | None = None

    @field_validator("runner_backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _runner_backend(value, RUNNER_BACKENDS)

    @field_validator("runner_metrics_address")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _metrics_address(value)

    @field_validator("local_config_file", "slurm_config_file")
    @classmethod
    def _config_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _slurm_settings(self) -> Self:
        self.runner_working_base_dir = self.runner_working_base_dir.absolute()
        if self.runner_backend not in SLURM_BACKENDS:
            return self
        if self.slurm_config_file is None:
            raise ValueError(f"FRACTAL_SLURM_CONFIG_FILE is required by {self.runner_backend}")
        if self.slurm_worker_python is None:
            raise ValueError(f"FRACTAL_SLURM_WORKER_PYTHON is required by {self.runner_backend}")
        if self.runner_backend == "slurm_ssh":
            for name in self.missing_ssh_settings("working_base_dir"):
                raise ValueError(f"{name} is required by slurm_ssh")
            assert self.slurm_ssh_working_base_dir is not None
            if not self.slurm_ssh_working_base_dir.is_absolute():
                raise ValueError("FRACTAL_SLURM_SSH_WORKING_BASE_DIR must be an absolute path")
        # Its content is validated by the runner at start, and again each time it is re-read.
        return self

    def service_private_key_pem(self) -> str:
        return _read_key(
            self.service_private_key, self.service_private_key_file, "SERVICE_PRIVATE_KEY"
        )

    def api_public_key_pem(self) -> str | None:
        if not (self.jwt_public_key or self.jwt_public_key_file):
            return None
        return _read_key(self.jwt_public_key, self.jwt_public_key_file, "JWT_PUBLIC_KEY")


COLLECTOR_INSTALLERS = ("uv", "pip")


class CollectorSettings(CommonSettings, TasksPythonSettings, SlurmSshSettings):
    """Settings of the collector service. With FRACTAL_RUNNER_BACKEND slurm_ssh it collects on
    the cluster's login node over SSH (the runner's FRACTAL_SLURM_SSH_* settings, and
    FRACTAL_SLURM_SSH_TASKS_DIR), the FRACTAL_TASKS_PYTHON_* paths being the remote host's."""

    # The collector's own listener: health and reflection.
    collector_address: str = "127.0.0.1:50054"
    # api's internal listener (FRACTAL_API_INTERNAL_ADDRESS).
    api_url: str = "127.0.0.1:50053"
    # Task environments live in {FRACTAL_TASKS_DIR}/.fractal/ (reference §8.2).
    tasks_dir: Path = Path(".state/tasks")
    # uv (default; its cache is shared by every collection) or pip (the reference's steps).
    collector_installer: str = "uv"
    # The uv executable; unset: the one installed beside the collector's Python, else PATH.
    collector_uv: str | None = None
    # uv's cache folder (UV_CACHE_DIR); unset: uv's default.
    collector_uv_cache_dir: Path | None = None
    # pip is upgraded to at most this version in a pip-made environment (reference 2.3.7,
    # under the reference's name FRACTAL_MAX_PIP_VERSION).
    pip_max_version: str = Field(
        default="24.0",
        pattern=r"^[0-9]+(\.[0-9]+){0,2}$",
        validation_alias="FRACTAL_MAX_PIP_VERSION",
    )
    # Where packages come from (both installers): another index, local folders, or no index.
    collector_index_url: str | None = None
    collector_find_links: str = ""  # comma-separated folders or URLs
    collector_no_index: bool = False
    # How long a collector's claim on a collection lasts without renewal (renewed every third).
    collector_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Prometheus metrics over HTTP; empty: no endpoint.
    collector_metrics_address: str = DEFAULT_METRICS_ADDRESSES["collector"]
    service_private_key_file: Path | None = None
    service_private_key: str | None = None
    # The deployment's backend (the runner's setting): slurm_ssh collects over SSH.
    runner_backend: str = "local"
    # slurm_ssh: the remote base of the task environments ({base}/.fractal/…), the SSH user's;
    # the only folder the collector ever removes anything from on the remote host.
    slurm_ssh_tasks_dir: Path | None = None
    # slurm_ssh: the uv executable on the remote host (a path, or a name on its PATH); when it
    # is not there, environments are made with venv and pip (the reference's way).
    collector_ssh_uv: str = Field(default="uv", pattern=r"^[A-Za-z0-9_./+-]+$")
    # slurm_ssh: the longest one remote installer command may take.
    collector_ssh_command_seconds: float = Field(default=1800.0, gt=0)

    @field_validator("runner_backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _runner_backend(value, RUNNER_BACKENDS)

    @field_validator("collector_metrics_address")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _metrics_address(value)

    @field_validator("collector_installer")
    @classmethod
    def _installer(cls, value: str) -> str:
        if value not in COLLECTOR_INSTALLERS:
            raise ValueError(f"must be one of {', '.join(COLLECTOR_INSTALLERS)}")
        return value

    @model_validator(mode="after")
    def _absolute_tasks_dir(self) -> Self:
        self.tasks_dir = self.tasks_dir.absolute()
        if self.runner_backend == "slurm_ssh":
            for name in self.missing_ssh_settings("tasks_dir"):
                raise ValueError(f"{name} is required by slurm_ssh")
            tasks = self.slurm_ssh_tasks_dir
            if tasks is None or not tasks.is_absolute() or ".." in tasks.parts:
                raise ValueError("FRACTAL_SLURM_SSH_TASKS_DIR must be an absolute path")
        return self

    @property
    def over_ssh(self) -> bool:
        """Collections run on the remote host (the slurm_ssh backend)."""
        return self.runner_backend == "slurm_ssh"

    def find_links(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.collector_find_links.split(",") if part.strip())

    def service_private_key_pem(self) -> str:
        return _read_key(
            self.service_private_key, self.service_private_key_file, "SERVICE_PRIVATE_KEY"
        )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read ``cls`` from the environment, turning validation errors into one clear message."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            field = (".".join(str(p) for p in err["loc"]) or "?").upper()
            # A field read under an alias (the reference's name) reports the whole name.
            name = field if field.startswith(prefix.upper()) else f"{prefix}{field}"
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
