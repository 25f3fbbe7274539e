"""Page tokens: opaque, signed, and checked field by field."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from fractal_grpc import pagination
from fractal_grpc.grpckit.errors import InvalidArgument
from fractal_grpc.pagination import decode_token, encode_token


def _payload(token: str) -> dict[str, Any]:
    text = token.partition(".")[0]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _resigned(state: dict[str, Any]) -> str:
    """A token with the right signature over ``state``: what a leaked secret would allow, and
    what the field checks still refuse."""
    return encode_token(**state)  # type: ignore[arg-type]


def test_round_trip_and_empty() -> None:
    token = encode_token("q1", after=41, total=7)
    assert decode_token(token, "q1", ("after", "total")) == {"after": 41, "total": 7}
    assert decode_token("", "q1", ("after",)) is None


def _forged_payload(state: dict[str, Any]) -> str:
    good = encode_token("q1", after=1)
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + good.partition(".")[2]


@pytest.mark.parametrize(
    ("token", "fields"),
    [
        ("not a token", ("after",)),
        ("%%%.%%%", ("after",)),
        ("eyJxIjoicTEiLCJhZnRlciI6MX0", ("after",)),  # unsigned (the old format)
        (_forged_payload({"q": "q1", "after": 2}), ("after",)),  # payload changed
        (encode_token("q1", after=1) + "x", ("after",)),
        (encode_token("q2", after=1), ("after",)),  # another query
        (_resigned({"query": "q1"}), ("after",)),  # missing field
        (_resigned({"query": "q1", "after": "1"}), ("after",)),  # a string
        (_resigned({"query": "q1", "after": [1]}), ("after",)),  # a list
        (_resigned({"query": "q1", "after": 2**63}), ("after",)),  # out of range
        (_resigned({"query": "q1", "after": -2}), ("after",)),
        (_resigned({"query": "q1", "after": True}), ("after",)),
        (_resigned({"query": "q1", "after": 1.5}), ("after",)),
        (_resigned({"query": "q1", "after": 1, "total": 2}), ("after",)),  # an extra field
    ],
)
def test_refused_tokens(token: str, fields: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_token(token, "q1", fields)
    assert err.value.violations[0][0] == "page_token"


def test_another_secret_refuses_the_token() -> None:
    token = encode_token("q1", after=1)
    before = pagination._secret
    try:
        pagination.use_secret(b"another deployment's secret")
        with pytest.raises(InvalidArgument):
            decode_token(token, "q1", ("after",))
        assert decode_token(encode_token("q1", after=1), "q1", ("after",)) == {"after": 1}
    finally:
        pagination._secret = before


def test_token_is_opaque_but_not_secret() -> None:
    assert _payload(encode_token("q1", after=3)) == {"q": "q1", "after": 3}
