"""Who is calling: set by the auth interceptor, read by servicers."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Access(enum.Enum):
    """What an RPC requires; declared per method in one table per service."""

    PUBLIC = "public"
    USER = "user"  # an active user
    VERIFIED = "verified"  # an active, verified user
    SUPERUSER = "superuser"  # an active superuser
    INTERNAL = "internal"  # a service token (aud=fractal-internal)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (user_id set) or a service (service set)."""

    user_id: int | None = None
    email: str = ""
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    username: str | None = None
    slurm_user: str | None = None
    cache_dir: str | None = None
    slurm_accounts: list[str] = field(default_factory=list)
    service: str | None = None
    # Tokens minted before the user's last password change carry a lower generation.
    token_generation: int = 0


ANONYMOUS = Principal()
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "fractal_principal", default=ANONYMOUS
)


def set_principal(principal: Principal) -> None:
    """The caller of the current RPC. Each RPC runs in a task of its own (grpc.aio), with its own
    copy of the context, so the value ends with the call and is never reset: a reset would fail
    wherever a stream's generator is finalised outside that context."""
    _current.set(principal)


def current_principal() -> Principal:
    """The caller of the current RPC (``ANONYMOUS`` for public methods)."""
    return _current.get()


def current_user() -> Principal:
    """The calling user; only valid inside RPCs that require a user."""
    principal = _current.get()
    if principal.user_id is None:
        raise RuntimeError("no user in this call")
    return principal


class PrincipalCache:
    """Loaded users, kept for ``ttl`` seconds: most calls then skip the user lookup.

    A change made through this process (``forget``) is seen at once, and wakes whoever
    ``watch``es that user (open streams re-check their caller); one made through another replica
    within ``ttl`` seconds.
    """

    def __init__(self, load: Callable[[int], Awaitable[Principal | None]], ttl: float = 2.0):
        self._load = load
        self.ttl = ttl
        self._entries: dict[int, tuple[float, Principal | None]] = {}
        self._watchers: dict[int, set[asyncio.Event]] = {}

    async def get(self, user_id: int) -> Principal | None:
        now = time.monotonic()
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        principal = await self._load(user_id)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[user_id] = (now + self.ttl, principal)
        return principal

    def forget(self, user_id: int) -> None:
        """The user changed: drop the cached entry and wake the user's watchers."""
        self._entries.pop(user_id, None)
        for event in self._watchers.get(user_id, ()):
            event.set()

    @contextmanager
    def watch(self, user_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever ``user_id`` changes (the watcher clears it)."""
        event = asyncio.Event()
        self._watchers.setdefault(user_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._watchers.get(user_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._watchers[user_id]
