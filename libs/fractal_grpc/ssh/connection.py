"""One shared, reconnecting SSH connection per (host, user): the runner's ``slurm_ssh`` backend
and the collector over SSH use it.

The connection is a fabric ``Connection``; each command runs on a channel of its own over the
connection's transport (paramiko's transport multiplexes channels, so concurrent commands do not
wait for each other). The only lock is held while (re)connecting — a few hundred milliseconds —
never across a command: a slow ``sacct`` does not hold up an ``sbatch``.

A command whose connection breaks (refused, reset, closed by a restarted sshd, timed out) raises
:class:`SshConnectionLost`; the next command opens a new connection. What to do about a lost
command is the caller's choice (the runner's ``fractal_runner.slurm.ssh_commands``: retry the
ones that change nothing, report the others; the collector's ``fractal_collector.hosts``).
``generation`` counts the connections opened, so a caller can do something once per connection
(the worker's version check).

Blocking paramiko calls run in threads (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko

__all__ = ["SshConnection", "SshConnectionLost", "SshTarget"]

logger = logging.getLogger(__name__)

_READ_BYTES = 65536
_LOST = (paramiko.SSHException, EOFError, OSError, socket.timeout)


class SshConnectionLost(RuntimeError):
    """The SSH connection failed or broke while a command was sent or ran."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str
    port: int = 22
    key_file: Path | None = None
    #: A known_hosts file: the host key must be in it. None: any host key is accepted.
    known_hosts: Path | None = None
    connect_timeout: float = 10.0


class SshConnection:
    """The shared connection to one (host, user); see the module docstring."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._connect_lock = threading.Lock()
        self._conn: fabric.Connection | None = None
        #: Connections opened so far (a new one after each loss).
        self.generation = 0

    async def exec(
        self, command: str, *, stdin: bytes | None = None, seconds: float = 60.0
    ) -> tuple[int, bytes, bytes]:
        """Run the shell command ``command`` remotely: (exit status, stdout, stderr).
        SshConnectionLost when the connection fails, or no answer came within ``seconds``
        (a silent peer looks the same as a slow one: the connection is dropped either way)."""
        return await asyncio.to_thread(self._exec, command, stdin, seconds)

    async def close(self) -> None:
        await asyncio.to_thread(self._drop, None)

    # --- in threads ---------------------------------------------------------------------------

    def _transport(self) -> paramiko.Transport:
        with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.is_connected:
                transport = conn.transport
                if transport is not None and transport.is_active():
                    return transport
            self._close(conn)
            self._conn = None
            t = self.target
            conn = fabric.Connection(
                host=t.host,
                user=t.user,
                port=t.port,
                connect_timeout=t.connect_timeout,
                forward_agent=False,
                connect_kwargs={
                    "key_filename": [str(t.key_file)] if t.key_file else None,
                    "look_for_keys": t.key_file is None,
                    "allow_agent": False,
                    "banner_timeout": t.connect_timeout,
                    "auth_timeout": t.connect_timeout,
                },
            )
            if t.known_hosts is not None:
                conn.client.load_host_keys(str(t.known_hosts))
                conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                conn.open()
            except (*_LOST, paramiko.ssh_exception.NoValidConnectionsError) as e:
                self._close(conn)
                raise SshConnectionLost(f"cannot connect to {t.user}@{t.host}:{t.port}: {e}") from e
            transport = conn.transport
            if transport is None:
                raise SshConnectionLost(f"no SSH transport to {t.host}:{t.port}")
            transport.set_keepalive(15)
            self._conn = conn
            self.generation += 1
            logger.info(
                "SSH connection %d to %s@%s:%d opened", self.generation, t.user, t.host, t.port
            )
            return transport

    def _exec(self, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        transport = self._transport()
        deadline = time.monotonic() + timeout
        try:
            channel = transport.open_session(timeout=self.target.connect_timeout)
        except _LOST as e:
            self._drop(transport)
            raise SshConnectionLost(f"cannot open an SSH channel: {e}") from e
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {timeout:g} s")
                select.select([channel], [], [], min(left, 1.0))
                got = False
                while channel.recv_ready():
                    out += channel.recv(_READ_BYTES)
                    got = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_BYTES)
                    got = True
                drained = not (channel.recv_ready() or channel.recv_stderr_ready())
                if channel.exit_status_ready() and not got and drained:
                    break
                if not transport.is_active():
                    raise SshConnectionLost("the SSH connection closed while a command ran")
            status = channel.recv_exit_status()
            if status == -1:  # the channel closed without an exit status: the connection broke
                raise SshConnectionLost("the SSH connection closed before the command ended")
            return status, bytes(out), bytes(err)
        except _LOST as e:
            self._drop(transport)
            raise SshConnectionLost(f"the SSH connection broke: {e}") from e
        except SshConnectionLost:
            self._drop(transport)
            raise
        finally:
            channel.close()

    def _drop(self, transport: paramiko.Transport | None) -> None:
        """Forget the connection (only if it is still the one of ``transport``, or any)."""
        with self._connect_lock:
            conn = self._conn
            if conn is None or (transport is not None and conn.transport is not transport):
                return
            self._conn = None
            self._close(conn)

    @staticmethod
    def _close(conn: fabric.Connection | None) -> None:
        if conn is None:
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close cleanly
            logger.debug("closing a broken SSH connection failed", exc_info=True)
