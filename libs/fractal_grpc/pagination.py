"""Opaque page tokens (AIP-158): keyset positions, bound to the query that made them.

A token is ``base64(json state) "." base64(hmac)``, signed with the deployment's secret
(``use_secret``; api derives it from its settings). A token that is not one of ours, was changed,
was made for another query, or whose fields are not what the caller expects is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fractal_grpc.grpckit.errors import invalid_field

DEFAULT_PAGE_SIZE = 100
_MAX_POSITION = 2**63 - 1
_SIGNATURE_BYTES = 16

# Replaced at start by ``use_secret``; a random one keeps tokens of a lone process valid.
_secret = secrets.token_bytes(32)


def use_secret(secret: bytes) -> None:
    """Sign and check page tokens with ``secret`` (the same on every replica of a service)."""
    global _secret
    _secret = hashlib.sha256(b"fractal page tokens\0" + secret).digest()


def page_size(requested: int, *, maximum: int = 1000, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The size of the page to return: ``default`` for 0, at most ``maximum`` (the proto rules
    refuse negative sizes)."""
    if requested <= 0:
        return default
    return min(requested, maximum)


def query_fingerprint(*parts: Any) -> str:
    """A short digest of the query a token belongs to."""
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: bytes) -> bytes:
    return hmac.new(_secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def encode_token(query: str, **state: int) -> str:
    payload = json.dumps({"q": query, **state}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_sign(payload))}"


def decode_token(token: str, query: str, fields: Sequence[str]) -> dict[str, int] | None:
    """The positions stored in ``token`` (exactly ``fields``, each a non-negative integer); None
    for an empty token. A token that is malformed, forged or was made for another query is
    INVALID_ARGUMENT."""
    if not token:
        return None
    payload_text, _, signature_text = token.partition(".")
    try:
        payload = _unb64(payload_text)
        signature = _unb64(signature_text)
    except (ValueError, binascii.Error):
        raise invalid_field("page_token", "malformed page token") from None
    if not hmac.compare_digest(signature, _sign(payload)):
        raise invalid_field("page_token", "not a page token of this service")
    try:
        state = json.loads(payload)
    except ValueError:
        raise invalid_field("page_token", "malformed page token") from None
    if not isinstance(state, dict) or state.pop("q", None) != query:
        raise invalid_field("page_token", "page token does not belong to this query")
    if set(state) != set(fields) or not all(
        type(v) is int and 0 <= v <= _MAX_POSITION for v in state.values()
    ):
        raise invalid_field("page_token", "malformed page token")
    return state


T = TypeVar("T")


def split_page(
    rows: Sequence[T], size: int, query: str, position: Callable[[T], dict[str, int]]
) -> tuple[Sequence[T], str]:
    """``rows`` fetched with ``limit size + 1``: the page, and the token of the next one ("" on
    the last page), which stores ``position`` of the page's last row."""
    if len(rows) <= size:
        return rows, ""
    return rows[:size], encode_token(query, **position(rows[size - 1]))
