"""A collection's environment folder on the local disk: created only if new, marked as the
collection's, and removed only when the mark says it is ours (never another collection's)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

MARKER = ".fractal-collection"


class FolderExists(Exception):
    """The environment folder exists and belongs to another collection (or to nobody known)."""


def _is_ours(folder: Path, collection_id: int) -> bool:
    try:
        return (folder / MARKER).read_text().strip() == str(collection_id)
    except OSError:
        return False


def create(folder: Path, collection_id: int) -> None:
    """Create ``folder`` (its parents too) and mark it; a leftover of an earlier attempt of the
    same collection is removed first. An existing folder of anything else: ``FolderExists``."""
    if folder.exists() and _is_ours(folder, collection_id):
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise FolderExists(f"the environment folder {folder} already exists") from None
    (folder / MARKER).write_text(f"{collection_id}\n")


def remove_now(folder: Path | None, collection_id: int) -> bool:
    """Remove ``folder`` if it is this collection's; returns whether it did."""
    if folder is None or not folder.exists() or not _is_ours(folder, collection_id):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


async def remove(folder: Path | None, collection_id: int) -> bool:
    return await asyncio.to_thread(remove_now, folder, collection_id)
