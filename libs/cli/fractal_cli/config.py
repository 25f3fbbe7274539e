"""Where the CLI finds its server and credentials, and where it keeps its token.

Each setting comes from the first of: the command-line option (``--address``, ``--user``,
``--password``, ``--timeout``), the environment (``FRACTAL_SERVER``, ``FRACTAL_USER``,
``FRACTAL_PASSWORD``, ``FRACTAL_TIMEOUT``, as fractal-client's), the config file
(``$FRACTAL_CONFIG``, else ``$XDG_CONFIG_HOME/fractal/config.toml``: keys ``address``, ``user``,
``password``, ``timeout``), then the defaults. The token of the last login is cached per server
and user under ``$XDG_CACHE_HOME/fractal/`` (mode 0600), so that a command does not log in
again; an expired cached token is replaced by a new login with the password.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0

ENV = {
    "address": "FRACTAL_SERVER",
    "user": "FRACTAL_USER",
    "password": "FRACTAL_PASSWORD",
    "timeout": "FRACTAL_TIMEOUT",
}


class ConfigError(Exception):
    """A setting that is missing or malformed (a usage error)."""


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def config_path() -> Path:
    explicit = os.environ.get("FRACTAL_CONFIG")
    if explicit:
        return Path(explicit)
    return _xdg("XDG_CONFIG_HOME", ".config") / "fractal" / "config.toml"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "fractal"


def read_config_file(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(ENV))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)} (known: {', '.join(ENV)})"
        )
    return data


def write_config_file(path: Path, values: dict[str, str | float]) -> None:
    """Write ``values`` as TOML (mode 0600: it may hold a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, value in values.items():
        # A JSON string is a valid TOML basic string.
        text = json.dumps(value) if isinstance(value, str) else repr(float(value))
        lines.append(f"{key} = {text}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


@dataclass
class Settings:
    address: str
    user: str | None
    password: str | None
    timeout: float

    @classmethod
    def resolve(
        cls,
        *,
        address: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
    ) -> Settings:
        given: dict[str, object | None] = {
            "address": address,
            "user": user,
            "password": password,
            "timeout": timeout,
        }
        path = config_path()
        from_file = read_config_file(path)
        values: dict[str, object | None] = {}
        for key, variable in ENV.items():
            value = given[key]
            if value is None:
                value = os.environ.get(variable) or None
            if value is None:
                value = from_file.get(key)
            values[key] = value
        try:
            seconds = float(values["timeout"]) if values["timeout"] is not None else None  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(
                f"timeout must be a number of seconds, not {values['timeout']!r}"
            ) from None
        if seconds is not None and seconds <= 0:
            raise ConfigError("timeout must be positive")
        return cls(
            address=str(values["address"] or DEFAULT_ADDRESS),
            user=str(values["user"]) if values["user"] else None,
            password=str(values["password"]) if values["password"] else None,
            timeout=seconds or DEFAULT_TIMEOUT,
        )

    def token_file(self) -> Path:
        key = hashlib.sha256(f"{self.address}\n{self.user or ''}".encode()).hexdigest()[:24]
        return cache_dir() / f"token-{key}"

    def cached_token(self) -> str:
        try:
            return self.token_file().read_text().strip()
        except OSError:
            return ""

    def save_token(self, token: str) -> None:
        path = self.token_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(token)
        except OSError:
            pass  # a cache: without it, the next command logs in again
