"""Opaque page tokens (AIP-158): keyset positions, bound to the query that made them."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fractal_grpc.grpckit.errors import invalid_field

DEFAULT_PAGE_SIZE = 100


def page_size(requested: int, *, maximum: int = 1000, default: int = DEFAULT_PAGE_SIZE) -> int:
    if requested == 0:
        return default
    return min(requested, maximum)


def query_fingerprint(*parts: Any) -> str:
    """A short digest of the query a token belongs to."""
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def encode_token(query: str, **state: Any) -> str:
    raw = json.dumps({"q": query, **state}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str) -> dict[str, Any] | None:
    """The state stored in ``token``; None for an empty token. A token that is malformed or was
    made for another query is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        raise invalid_field("page_token", "malformed page token") from None
    if not isinstance(state, dict) or state.get("q") != query:
        raise invalid_field("page_token", "page token does not belong to this query")
    return state


T = TypeVar("T")


def split_page(
    rows: Sequence[T], size: int, query: str, position: Callable[[T], dict[str, Any]]
) -> tuple[Sequence[T], str]:
    """``rows`` fetched with ``limit size + 1``: the page, and the token of the next one ("" on
    the last page), which stores ``position`` of the page's last row."""
    if len(rows) <= size:
        return rows, ""
    return rows[:size], encode_token(query, **position(rows[size - 1]))
