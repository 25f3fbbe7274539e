"""Process logging: one line per record, as text or JSON (``FRACTAL_LOG_FORMAT``), with the
ids of what the line is about.

Ids travel in a context variable (:func:`log_context`, :func:`bind`, :func:`context_with`):
the gRPC logging interceptor binds the request id and job id of each call, the runner binds the
job id of each job's task, the error interceptor the incident id of an unexpected error. Every
record logged in that context carries them; ``extra=`` fields of a call are added too.

JSON lines have ``time``, ``level``, ``service``, ``logger``, ``message``, then the ids and
extra fields that are set, and ``exception`` (the traceback text) when there is one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

LOG_FORMATS = ("text", "json")

_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "fractal_log_fields", default=MappingProxyType({})
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def current_fields() -> Mapping[str, Any]:
    """The ids bound in the current context."""
    return _fields.get()


def _merged(fields: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(_fields.get())
    merged.update((k, v) for k, v in fields.items() if v is not None and v != "")
    return merged


def bind(**fields: Any) -> None:
    """Add ids to the current context for the rest of it (a task, an RPC); None and "" are
    ignored."""
    _fields.set(_merged(fields))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Ids bound for the ``with`` block only."""
    token = _fields.set(_merged(fields))
    try:
        yield
    finally:
        # ValueError: closed from another context (a generator finalised late).
        with contextlib.suppress(ValueError):
            _fields.reset(token)


def context_with(**fields: Any) -> contextvars.Context:
    """A copy of the current context with ``fields`` bound: for ``asyncio.create_task(...,
    context=...)``, so every line of that task carries them."""
    ctx = contextvars.copy_context()
    ctx.run(bind, **fields)
    return ctx


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class _ContextFilter(logging.Filter):
    """Puts the service name and the context's ids on each record (as ``fields``)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.fields = {**_fields.get(), **getattr(record, "fields", {})}
        return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = _extras(record)
        fields = extras.pop("fields", {})
        extras.pop("service", None)
        for key, value in {**fields, **extras}.items():
            line.setdefault(key, _jsonable(value))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message [key=value ...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        fields = {**extras.pop("fields", {}), **extras}
        fields.pop("service", None)
        if not fields:
            return text
        suffix = " ".join(f"{k}={v}" for k, v in fields.items())
        head, sep, tail = text.partition("\n")
        return f"{head} [{suffix}]{sep}{tail}"


def handler(stream: Any, *, service: str, log_format: str = "text") -> logging.Handler:
    """A stream handler writing ``log_format`` lines of ``service``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    out = logging.StreamHandler(stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    out.addFilter(_ContextFilter(service))
    return out


def configure(level: str, log_format: str = "text", *, service: str) -> None:
    """The process's logging: one handler on stderr, replacing any other."""
    import sys

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler(sys.stderr, service=service, log_format=log_format))
    root.setLevel(level)
