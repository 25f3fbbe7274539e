"""Who is calling: set by the auth interceptor, read by servicers."""

from __future__ import annotations

import contextvars
import enum
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


ANONYMOUS = Principal()
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "fractal_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    return _current.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


def current_user() -> Principal:
    """The calling user; only valid inside RPCs that require a user."""
    principal = _current.get()
    if principal.user_id is None:
        raise RuntimeError("no user in this call")
    return principal
