"""The fast wire encoder of images gives the message that filling images one by one gives."""

from __future__ import annotations

import random

import orjson
import pytest

from fractal.v2 import dataset_service_pb2 as dpb
from fractal_grpc.convert import fill_image
from fractal_grpc.grpckit.interceptors import Encoded, passing_encoded
from fractal_grpc.images.wire import ImageEncoder, varint

FIELD = dpb.ExportDatasetResponse.IMAGES_FIELD_NUMBER


def slow(rows: list[tuple[str, str | None, str, str]]) -> dpb.ExportDatasetResponse:
    message = dpb.ExportDatasetResponse()
    for zarr_url, origin, attributes, types in rows:
        image = {
            "zarr_url": zarr_url,
            "origin": origin,
            "attributes": orjson.loads(attributes),
            "types": orjson.loads(types),
        }
        fill_image(message.images.add(), image)
    return message


def fast(rows: list[tuple[str, str | None, str, str]], **options: int) -> dpb.ExportDatasetResponse:
    return dpb.ExportDatasetResponse.FromString(ImageEncoder(FIELD, **options).encode(rows))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**21, b"\x80\x80\x80\x01"),
    ],
)
def test_varint(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded


CASES = [
    ("/z/a.zarr/A/01/0", None, "{}", "{}"),  # nothing but the url (empty maps encode to b"")
    ("/z/a.zarr/A/01/1", "/z/a.zarr/A/01/0", '{"well": "A01", "z": 3}', '{"3D": true}'),
    ("/z/é.zarr/ü/" + "x" * 300, "/z/" + "o" * 200, '{"k": 1.5, "b": false}', '{"a": false}'),
    ("/z/n", None, '{"big": 9007199254740992, "neg": -4, "s": "' + "é" * 100 + '"}', "{}"),
    # Lengths past the looked-up varints (2**14): url, origin and body computed.
    ("/z/" + "l" * 20_000, "/o/" + "m" * 17_000, '{"w": "A01"}', '{"3D": false}'),
    ("/z/" + "k" * 16_379, None, "{}", "{}"),  # a url just below 2**14 bytes, its body past it
]


def test_each_shape_equals_filling_one_by_one() -> None:
    assert fast(CASES) == slow(CASES)
    assert fast(CASES).images[2].attributes["k"].number_value == 1.5
    assert not fast(CASES).images[0].HasField("origin")


def test_many_images_with_repeating_attributes_and_a_small_cache() -> None:
    rng = random.Random(7)
    rows = []
    for i in range(2000):
        attributes = {"well": rng.choice(["A01", "B02", "C03"]), "acquisition": rng.randrange(4)}
        if rng.random() < 0.2:
            attributes["note"] = rng.choice(["x", "y", 2.25, True])
        types = {"3D": rng.random() < 0.5} if rng.random() < 0.9 else {}
        origin = None if rng.random() < 0.5 else f"/z/o/{i}"
        rows.append(
            (
                f"/z/p.zarr/{i}",
                origin,
                orjson.dumps(attributes).decode(),
                orjson.dumps(types).decode(),
            )
        )
    # A cache smaller than the distinct texts is cleared and refilled, with the same result.
    assert fast(rows, max_cached=5) == slow(rows)
    assert fast(rows) == slow(rows)


def test_header_bytes_then_images_parse_as_one_message() -> None:
    header = dpb.ExportDatasetResponse(name="ds", zarr_dir="/z", image_count=4)
    header.filters.types["3D"] = True
    message = dpb.ExportDatasetResponse.FromString(
        header.SerializeToString() + ImageEncoder(FIELD).encode(CASES)
    )
    expected = slow(CASES)
    expected.MergeFrom(header)
    assert message == expected


def test_encoded_responses_pass_the_serializer_as_they_are() -> None:
    serialize = passing_encoded(dpb.ExportDatasetResponse.SerializeToString)
    assert serialize is not None
    message = dpb.ExportDatasetResponse(name="ds")
    assert serialize(message) == message.SerializeToString()  # a message is serialized
    wire = message.SerializeToString() + ImageEncoder(FIELD).encode(CASES)
    sent = serialize(Encoded(wire))
    assert sent == wire and dpb.ExportDatasetResponse.FromString(sent).name == "ds"
    assert type(sent) is bytes  # what gRPC's Cython layer takes (a subclass is refused)
    # Every interceptor wraps the handler: the serializer is wrapped once.
    assert passing_encoded(serialize) is serialize
    assert passing_encoded(None) is None
