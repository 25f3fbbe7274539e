"""The collection's log on its way to api: lines are buffered and sent with every lease
renewal (every third of the lease), so api keeps the whole log and watchers see it grow, and
the lease stays ours while the installer runs. A renewal refused (another collector holds the
collection now) cancels the work."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fractal_collector.api_client import LeaseLost, RegistrationClient

log = logging.getLogger("fractal.collector")


class ProgressReporter:
    def __init__(self, api: RegistrationClient, collection_id: int) -> None:
        self.api = api
        self.collection_id = collection_id
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.lost = False

    def write(self, text: str) -> None:
        self._pending.append(text)

    def take(self) -> str:
        """The text not yet sent (for the final call, which carries it)."""
        text = "".join(self._pending)
        self._pending.clear()
        return text

    async def flush(
        self, *, env_dir: str | None = None, package_version: str | None = None
    ) -> None:
        async with self._lock:
            text = self.take()
            try:
                await self.api.report(
                    self.collection_id, text, env_dir=env_dir, package_version=package_version
                )
            except BaseException:
                self._pending.insert(0, text)
                raise

    def keep_lease(self, work: asyncio.Task[object]) -> None:
        """Renew the lease in the background while ``work`` runs; cancel it if lost."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.api.lease_seconds / 3)
                if self._task is None:
                    return
                try:
                    await self.flush()
                except LeaseLost:
                    log.warning("collection %s: lease lost; stopping", self.collection_id)
                    self.lost = True
                    work.cancel()
                    return

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        """Stop renewing; once no report is on its way (it holds the lock), so that the text
        of a report api refused is back in the buffer for the final call."""
        if self._task is None:
            return
        async with self._lock:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def final_text(self) -> str:
        """Everything not yet sent, for the final call (FinishCollection carries it)."""
        await self.stop()
        return self.take()
