"""The running settings as a superuser sees them (reference GET /api/settings/), secrets
masked.

The reference replaces the value of every key that does not start with ``FRACTAL`` or whose
name contains PASSWORD, SECRET, PWD or TOKEN by ``"***"``. Here also private keys, and the
password inside a URL (a database URL with credentials keeps its user and host). An unset
setting is shown as an empty string, so a reader can tell "not configured" from "hidden".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_WORDS = ("PASSWORD", "SECRET", "PWD", "TOKEN", "PRIVATE_KEY")


def is_secret(name: str) -> bool:
    return not name.startswith("FRACTAL") or any(word in name for word in _SECRET_WORDS)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def without_url_password(text: str) -> str:
    """``text`` with the password of a URL replaced by the mask (anything else unchanged)."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return MASK  # not a URL we can read: hide it rather than risk a secret
    if not password:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def masked_settings(values: Mapping[str, Any]) -> dict[str, str]:
    """Each setting (by environment variable name) as text, secrets masked."""
    shown: dict[str, str] = {}
    for name, value in values.items():
        text = _text(value)
        if text and is_secret(name):
            shown[name] = MASK
        else:
            shown[name] = without_url_password(text)
    return shown
