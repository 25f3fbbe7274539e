"""Proto conversions: timestamps and Struct numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from fractal_grpc.convert import json_numbers, struct_dict, timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 7, 4, 10, 15, 0, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 1, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 11, 26, 3, 0, 0),  # naive: UTC
    ],
)
def test_timestamp_matches_protobufs_own_conversion(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    assert timestamp(value) == expected


def test_struct_numbers_come_back_as_ints_when_integral() -> None:
    value = struct_pb2.Struct()
    value.update({"n": 2, "x": 2.5, "nested": {"k": [1, 2.0, 3.25]}, "flag": True})
    assert struct_dict(value) == {"n": 2, "x": 2.5, "nested": {"k": [1, 2, 3.25]}, "flag": True}
    assert type(struct_dict(value)["n"]) is int
    assert json_numbers(2.0**60) == 2.0**60  # beyond exact integers in a double: left alone
