"""`fractal task collect` and `fractal task check-collection`: TaskCollectionService.

A collection is long-running: `collect` prints the PENDING record, or with --watch follows it
to its end, streaming the collection log (to stdout for people; to stderr with --json, so that
stdout holds only the final record).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.text import Text

from fractal.v2 import task_collection_pb2 as cpb
from fractal_cli import exits
from fractal_cli.core import Session
from fractal_cli.output import Column

STATES = {
    cpb.COLLECTION_STATE_PENDING: "pending",
    cpb.COLLECTION_STATE_INSTALLING: "installing",
    cpb.COLLECTION_STATE_OK: "OK",
    cpb.COLLECTION_STATE_FAILED: "failed",
}
KINDS = {
    cpb.COLLECTION_KIND_COLLECT: "collect",
    cpb.COLLECTION_KIND_DEACTIVATE: "deactivate",
    cpb.COLLECTION_KIND_REACTIVATE: "reactivate",
}


def _opt(c: cpb.TaskCollection, name: str) -> str | None:
    """An optional string field, None when unset (or empty)."""
    value: str = getattr(c, name)
    return value or None


COLLECTION_COLUMNS: list[Column] = [
    ("id", lambda c: c.id),
    ("kind", lambda c: KINDS.get(c.kind, "")),
    ("state", lambda c: STATES.get(c.state, "")),
    ("package", lambda c: c.package_name),
    ("version", lambda c: _opt(c, "package_version") or _opt(c, "requested_version")),
    ("extras", lambda c: _opt(c, "package_extras")),
    ("python", lambda c: c.python_version),
    ("pinned", lambda c: dict(c.pinned_package_versions) or None),
    ("source", lambda c: c.source or None),
    ("env_dir", lambda c: _opt(c, "env_dir")),
    ("task_ids", lambda c: list(c.task_ids) or None),
    ("active", lambda c: c.active),
    ("error", lambda c: _opt(c, "error")),
]


def parse_pins(pins: Sequence[str]) -> dict[str, str]:
    """``NAME=VERSION`` items as a mapping; anything else is a usage error."""
    out: dict[str, str] = {}
    for item in pins:
        name, sep, version = item.partition("=")
        if not sep or not name.strip() or not version.strip():
            raise typer.BadParameter(
                f"{item!r} is not NAME=VERSION", param_hint="--pinned-dependency"
            )
        out[name.strip()] = version.strip()
    return out


def is_local_wheel(package: str) -> bool:
    """A wheel file on this machine: it is uploaded (the server may not see this disk)."""
    return package.endswith(".whl") and Path(package).is_file()


def collect(
    s: Session,
    package: str,
    *,
    package_version: str | None,
    python_version: str | None,
    package_extras: str | None,
    pins: dict[str, str],
    watch: bool,
) -> None:
    client = s.client()
    if is_local_wheel(package):
        if package_version is not None:
            raise typer.BadParameter(
                "a wheel's version is in its file name", param_hint="--package-version"
            )
        collection = client.upload_and_collect(
            Path(package).resolve(),
            package_extras=package_extras,
            python_version=python_version,
            pinned_package_versions=pins,
        )
    else:
        collection = client.collect_pip(
            package,
            package_version=package_version,
            package_extras=package_extras,
            python_version=python_version,
            pinned_package_versions=pins,
        )
    if not watch:
        s.out.one(collection, COLLECTION_COLUMNS, title=f"collection {collection.id}")
        return
    follow(s, collection)


def follow(s: Session, collection: cpb.TaskCollection) -> None:
    """Stream the collection's log and state changes until it ends; FAILED exits 6."""
    final = collection
    state = -1
    for message in s.client().watch_collection(collection.id):
        final = message.collection
        if final.state != state and not s.out.json_mode:
            state = final.state
            s.out.console.print(Text(f"collection {final.id}: {STATES.get(state, state)}"))
        if message.new_log:
            stream = sys.stderr if s.out.json_mode else sys.stdout
            text = message.new_log
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
    finish(s, final)


def finish(s: Session, collection: cpb.TaskCollection) -> None:
    s.out.one(collection, COLLECTION_COLUMNS, title=f"collection {collection.id}")
    if collection.state == cpb.COLLECTION_STATE_FAILED:
        if not s.out.json_mode:
            s.out.fail(collection.error or "the collection failed")
        raise typer.Exit(exits.JOB_FAILED)


def check(s: Session, collection_id: int, *, include_logs: bool) -> None:
    """The collection's record (and its log); it does not wait."""
    collection = s.client().get_collection(collection_id, with_log=include_logs)
    s.out.one(collection, COLLECTION_COLUMNS, title=f"collection {collection.id}")
    if include_logs and not s.out.json_mode and collection.HasField("log"):
        print(collection.log, end="" if collection.log.endswith("\n") else "\n")
