"""Leases on runs: which runner replica executes a run (DESIGN §9: the runner is safe to run as
several replicas).

- Every runner process has an instance id, ``hostname-pid-random`` (``Instance.owner``).
- A replica executes a run only after claiming it atomically in ``runner.runs`` (owner = itself,
  ``lease_expires_at = now() + lease``). The claim succeeds when the run is not finished and has
  no owner, is already its own, or its lease expired. Times are the database's ``now()``, so the
  replicas' clocks do not matter.
- While a run is in its hands (executing, or waiting for a slot), the owner renews the lease
  every ``renew_seconds``. A replica that cannot renew a lease for ``lease - renew`` seconds
  interrupts that run before the lease can lapse, so two replicas never execute one run.
- Every ``lease_seconds`` (and as soon as the earliest lease held by another replica would
  expire) each replica claims and resumes the unfinished runs whose lease expired; start-up
  does the same, so it never takes a run a live replica is executing.
- Same host shortcut: ``Instance.process`` identifies the owner's process (boot id, pid
  namespace, pid, start time). A run owned by a process of this host (same boot, same pid
  namespace) that no longer exists is claimable at once, without waiting for its lease: a
  runner restarted after a crash resumes its runs immediately, as a single replica always did.

The lease length is ``FRACTAL_RUNNER_LEASE_SECONDS`` (default 30 s; renewal every third of it).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

import psutil

DEFAULT_LEASE_SECONDS = 30.0
#: Start times of one process agree to the hundredth of a second (psutil reads /proc).
_START_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class LeaseConfig:
    """How long a claim on a run lasts, and how often its owner renews it."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    renew_seconds: float = DEFAULT_LEASE_SECONDS / 3

    def __post_init__(self) -> None:
        if not 0 < self.renew_seconds < self.lease_seconds:
            raise ValueError(
                f"need 0 < renew_seconds ({self.renew_seconds}) < lease_seconds "
                f"({self.lease_seconds})"
            )

    @classmethod
    def of(cls, lease_seconds: float) -> LeaseConfig:
        """A lease of ``lease_seconds``, renewed every third of it."""
        return cls(lease_seconds=lease_seconds, renew_seconds=lease_seconds / 3)


def _read_boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    return link.removeprefix("pid:[").removesuffix("]")


def _host_key() -> str | None:
    """``boot_id/pid-namespace``: processes with the same key can see each other's pids."""
    boot_id, namespace = _read_boot_id(), _pid_namespace()
    if not boot_id or not namespace:
        return None
    return f"{boot_id}/{namespace}"


def _process_key(host: str | None, pid: int) -> str | None:
    if host is None:
        return None
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return f"{host}/{pid}/{started:.2f}"


@dataclass(frozen=True)
class Instance:
    """The identity of one runner process."""

    owner: str
    process: str | None = None
    host: str | None = field(default=None, repr=False)

    @classmethod
    def current(cls) -> Instance:
        pid = os.getpid()
        host = _host_key()
        owner = f"{socket.gethostname()}-{pid}-{secrets.token_hex(4)}"
        return cls(owner=owner, process=_process_key(host, pid), host=host)

    def owns_host_of(self, process: str | None) -> bool:
        """Whether ``process`` (another owner's key) names a process this one can check."""
        return bool(self.host and process and process.startswith(f"{self.host}/"))

    def process_is_gone(self, process: str) -> bool:
        """True when ``process`` is a key of this host whose process no longer exists.

        Only a definite answer counts: a pid in use by some process started at the same time
        (or whose start time cannot be read) is taken for alive.
        """
        if not self.owns_host_of(process):
            return False
        assert self.host is not None
        try:
            pid_text, started_text = process[len(self.host) + 1 :].split("/")
            pid, started = int(pid_text), float(started_text)
        except ValueError:
            return False
        if self.process == process:
            return False
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            return abs(proc.create_time() - started) > _START_TIME_TOLERANCE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
