"""URL normalization (reference §6.1)."""

import pytest

from fractal_grpc.images.urls import normalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/data/zarr", "/data/zarr"),
        ("/data/zarr/", "/data/zarr"),
        ("/data/zarr///", "/data/zarr"),
        ("/data//zarr", "/data/zarr"),
        ("/data/./zarr", "/data/zarr"),
        ("/data/x/../zarr", "/data/zarr"),
        ("/data/zarr/plate.zarr/A/01/0/", "/data/zarr/plate.zarr/A/01/0"),
        ("//data/zarr", "/data/zarr"),
        ("///data/zarr", "/data/zarr"),
        ("/", "/"),
        ("//", "/"),
        ("/..", "/"),
        ("/données/ü.zarr/", "/données/ü.zarr"),
        ("/with space/a", "/with space/a"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/key", "S3 handling not implemented yet"),
        ("s3", "S3 handling not implemented yet"),
        ("relative/path", "URLs must begin with '/' or 's3'"),
        ("./x", "URLs must begin with '/' or 's3'"),
        ("", "URLs must begin with '/' or 's3'"),
        (" /leading-space", "URLs must begin with '/' or 's3'"),
        ("https://example.org/x", "URLs must begin with '/' or 's3'"),
        ("S3://upper", "URLs must begin with '/' or 's3'"),
    ],
)
def test_normalize_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as exc_info:
        normalize_url(url)
    assert str(exc_info.value) == message
