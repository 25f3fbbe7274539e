"""Normalization of image and zarr-directory URLs.

Only local absolute paths are supported, as in the reference: a URL starting with "/" is
normalized with :func:`os.path.normpath` (no trailing slash, ``.``/``..`` segments collapsed),
and a leading ``//`` is collapsed to a single ``/`` as well (POSIX ``normpath`` keeps it).
"""

import os

__all__ = ["normalize_url"]


def normalize_url(url: str) -> str:
    """Return the canonical form of ``url``.

    Raises ValueError for S3 URLs (not implemented yet) and for anything that is neither an
    absolute path nor an S3 URL.
    """
    if url.startswith("/"):
        normalized = os.path.normpath(url)
        if normalized.startswith("//"):
            # POSIX allows an implementation-defined meaning for exactly two leading slashes,
            # so normpath keeps them; for us they are just a redundant separator.
            normalized = "/" + normalized.lstrip("/")
        return normalized
    if url.startswith("s3"):
        raise ValueError("S3 handling not implemented yet")
    raise ValueError("URLs must begin with '/' or 's3'")
