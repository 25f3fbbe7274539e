"""A TCP forwarder the fault suite puts between the services and PostgreSQL, to cut the
database off for a moment (every connection dropped, new ones refused) and give it back at
once — an outage shorter than any restart."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TcpProxy:
    """Forwards a free loopback port to ``host:port``, from a thread (and event loop) of its
    own, so it keeps forwarding while the test's loop waits."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._cut = False

    def start(self) -> int:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""

        async def cut() -> None:
            self._cut = True
            for transport in list(self._transports):
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()

        self._run(cut())

    def restore(self) -> None:
        async def restore() -> None:
            self._cut = False

        self._run(restore())

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair: set[asyncio.BaseTransport] = {writer.transport, up_writer.transport}
        self._transports.update(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._transports.difference_update(pair)
            writer.transport.abort()
            up_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
