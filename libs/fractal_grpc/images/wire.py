"""Images in protobuf wire form, fast: the repeated ``images`` field of a message written as
bytes, for streams of millions of images (ExportDataset).

An image is its zarr_url and origin, which differ per image, and its attributes and types,
which a dataset repeats: a plate's images share a handful of well/acquisition combinations.
So the encoder serialises each distinct attributes (or types) JSON text once, with the
protobuf library and the conversion every other path uses (:func:`fractal_grpc.convert.
fill_image`), and writes each image as its two strings plus those cached bytes. A message
parsed from the result equals one filled image by image (tests/unit/test_image_wire.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from fractal.v2 import image_pb2
from fractal_grpc.convert import fill_image

# Image's field numbers (protos/fractal/v2/image.proto), each a length-delimited field.
_ZARR_URL = bytes(((1 << 3) | 2,))
_ORIGIN = bytes(((2 << 3) | 2,))


def varint(value: int) -> bytes:
    """``value`` (≥ 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The varints of every length below 2**14, looked up instead of computed: an image's url, its
# body and its origin are all shorter than that in practice (a longer one is computed).
_SHORT = 1 << 14
_VARINTS = [varint(n) for n in range(_SHORT)]


class ImageEncoder:
    """Writes images as one repeated message field (number ``field``) of an enclosing message.

    ``max_cached`` bounds the memory of the per-text caches (cleared when exceeded)."""

    def __init__(self, field: int, *, max_cached: int = 100_000) -> None:
        self._tag = varint((field << 3) | 2)
        self._max = max_cached
        self._attributes: dict[str, bytes] = {}
        self._types: dict[str, bytes] = {}

    def _encoded(self, cache: dict[str, bytes], text: str, column: str) -> bytes:
        if len(cache) >= self._max:
            cache.clear()
        image = image_pb2.Image()
        fill_image(image, {"zarr_url": "", column: orjson.loads(text)})
        cache[text] = encoded = image.SerializeToString()
        return encoded

    def encode(self, rows: Iterable[Sequence[Any]]) -> bytes:
        """Rows of (zarr_url, origin or None, attributes JSON text, types JSON text): tuples,
        or the records of a query that selects those four columns.

        One image per iteration of a tight loop (this runs for every image of an export): the
        varints looked up, each part joined by ``+`` (cheaper than a list and a join for a few
        short byte strings)."""
        attributes, types, tag = self._attributes, self._types, self._tag
        varints, short = _VARINTS, _SHORT
        parts: list[bytes] = []
        append = parts.append
        for zarr_url, origin, attrs_text, types_text in rows:
            url = zarr_url.encode()
            n = len(url)
            body = _ZARR_URL + (varints[n] if n < short else varint(n)) + url
            if origin is not None:
                raw = origin.encode()
                n = len(raw)
                body += _ORIGIN + (varints[n] if n < short else varint(n)) + raw
            encoded = attributes.get(attrs_text)
            if encoded is None:
                encoded = self._encoded(attributes, attrs_text, "attributes")
            body += encoded
            encoded = types.get(types_text)
            if encoded is None:
                encoded = self._encoded(types, types_text, "types")
            body += encoded
            n = len(body)
            append(tag + (varints[n] if n < short else varint(n)) + body)
        return b"".join(parts)
