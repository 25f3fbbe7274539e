"""What every command shares: the session (settings, output, client) and argument parsers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import typer

from fractal_cli.config import ConfigError, Settings
from fractal_cli.output import Output
from fractal_grpc.client import Credential, SyncClient

T = TypeVar("T")


@dataclass
class Session:
    settings: Settings
    out: Output
    _client: SyncClient | None = field(default=None, repr=False)

    def client(self, *, login: bool = True) -> SyncClient:
        """The client, with the cached token and (when known) the credential to renew it."""
        if self._client is None:
            s = self.settings
            credential = Credential(s.user, s.password) if s.user and s.password else None
            token = s.cached_token()
            if login and not token and credential is None:
                raise ConfigError(
                    "not logged in: give --user and --password (or FRACTAL_USER and "
                    "FRACTAL_PASSWORD, or user/password in the config file), or run "
                    "`fractal login`"
                )
            self._client = SyncClient(
                s.address,
                token,
                credential=credential,
                timeout=s.timeout,
                on_token=s.save_token,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def session(ctx: typer.Context) -> Session:
    obj = ctx.find_root().obj
    assert isinstance(obj, Session)
    return obj


def pages(fetch: Callable[[str], Any], items: str) -> Iterator[Any]:
    """Every item of a paginated list (``fetch(page_token)`` returns one page)."""
    token = ""
    while True:
        page = fetch(token)
        yield from getattr(page, items)
        token = page.next_page_token
        if not token:
            return


def json_value(text: str | None, option: str) -> Any:
    """A JSON option's value: inline JSON, or ``@path`` to read it from a file."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {text[1:]}: {exc.strerror}", param_hint=option
            ) from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc.msg})", param_hint=option) from None


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    value = json_value(text, option)
    if value is not None and not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return value


def scalar(text: str) -> Any:
    """``42``, ``1.5``, ``true``, ``null``, ``"quoted"``: as JSON; anything else as a string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if value is None or isinstance(value, int | float | str | bool) else text


def key_values(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``key=value`` options (values as by ``scalar``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint=option)
        out[key] = scalar(value)
    return out


def type_flags(pairs: Sequence[str], option: str) -> dict[str, bool]:
    """``type=true|false`` options (``type`` alone means true)."""
    out: dict[str, bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key:
            raise typer.BadParameter(f"{pair!r} is not type[=true|false]", param_hint=option)
        if not sep or value.lower() in ("true", "1", "yes"):
            out[key] = True
        elif value.lower() in ("false", "0", "no"):
            out[key] = False
        else:
            raise typer.BadParameter(
                f"{pair!r}: the value must be true or false", param_hint=option
            )
    return out


def filters(attributes: Sequence[str], types: Sequence[str]) -> dict[str, Any] | None:
    if not attributes and not types:
        return None
    return {
        "attributes": key_values(attributes, "--attribute"),
        "types": type_flags(types, "--type"),
    }
