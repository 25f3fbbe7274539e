"""request_id on the collection creates (CollectPip, UploadAndCollect's header, CollectCustom):
a retry with the key returns what the first call made and sends no second command, concurrent
retries make one collection, the key with a different request is refused with nothing made."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).parents[1] / "collector"))

from wheels import good_manifest  # noqa: E402

from fractal.events.v1 import collection_events_pb2  # noqa: E402
from fractal.v2 import task_collection_service_pb2 as pb  # noqa: E402
from fractal_grpc.client import AlreadyExistsError, Client, Credential  # noqa: E402
from fractal_grpc.events.bus import Subjects  # noqa: E402
from helpers import ApiClient, RequestRecorder, error_details  # noqa: E402

RACERS = 8


def _package() -> str:
    return f"pkg-{secrets.token_hex(4)}"


async def _commands_for(database_url: str, nats_prefix: str, collection_id: int) -> int:
    """How many collection commands for ``collection_id`` went into api's outbox."""
    payload = collection_events_pb2.CollectionSubmitted(
        collection_id=collection_id
    ).SerializeToString()
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM api.outbox WHERE subject = $1 AND payload = $2",
            Subjects(nats_prefix).collection_submit,
            payload,
        )
        return count
    finally:
        await conn.close()


async def _collections_of(user: ApiClient, package: str) -> list[int]:
    listed = await user.collections.ListCollections(
        pb.ListCollectionsRequest(page_size=1000), metadata=user.md
    )
    return [c.id for c in listed.collections if c.package_name == package]


def _refused_as_reused(err: grpc.aio.AioRpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, fields = error_details(err)
    assert info is not None and info.reason == "REQUEST_ID_REUSED"
    assert info.metadata["field"] == field
    assert fields == [field]


async def test_a_retried_collect_pip_returns_the_same_collection_and_sends_one_command(
    user: ApiClient, database_url: str, nats_prefix: str
) -> None:
    package, rid = _package(), f"rid-{secrets.token_hex(6)}"
    request = pb.CollectPipRequest(package=package, package_version="1.0", request_id=rid)
    first = (await user.collections.CollectPip(request, metadata=user.md)).collection
    again = (await user.collections.CollectPip(request, metadata=user.md)).collection
    assert again.id == first.id and again.state == first.state
    assert await _collections_of(user, package) == [first.id]
    assert await _commands_for(database_url, nats_prefix, first.id) == 1

    # The same key for another request: refused, nothing recorded.
    other = pb.CollectPipRequest(package=package, package_version="2.0", request_id=rid)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.CollectPip(other, metadata=user.md)
    _refused_as_reused(err.value, "request_id")
    assert await _collections_of(user, package) == [first.id]

    # Without the key, the same request is a new one: the package is being collected.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.CollectPip(
            pb.CollectPipRequest(package=package, package_version="1.0"), metadata=user.md
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_request_ids_are_per_user_and_per_method(admin: ApiClient) -> None:
    alice, bob = await admin.new_user(), await admin.new_user()
    rid = f"rid-{secrets.token_hex(6)}"
    mine = await alice.collections.CollectPip(
        pb.CollectPipRequest(package=_package(), package_version="1.0", request_id=rid),
        metadata=alice.md,
    )
    theirs = await bob.collections.CollectPip(
        pb.CollectPipRequest(package=_package(), package_version="1.0", request_id=rid),
        metadata=bob.md,
    )
    assert mine.collection.id != theirs.collection.id
    # The key of a CollectPip does not stand for a CollectCustom of the same user.
    custom = await alice.collections.CollectCustom(_custom(request_id=rid), metadata=alice.md)
    assert len(custom.tasks) == 3


async def test_concurrent_collect_pips_with_one_request_id_make_one_collection(
    user: ApiClient, database_url: str, nats_prefix: str
) -> None:
    package, rid = _package(), f"rid-{secrets.token_hex(6)}"
    request = pb.CollectPipRequest(package=package, package_version="1.0", request_id=rid)
    answers = await asyncio.gather(
        *(user.collections.CollectPip(request, metadata=user.md) for _ in range(RACERS))
    )
    ids = {a.collection.id for a in answers}
    assert len(ids) == 1
    (made,) = ids
    assert await _collections_of(user, package) == [made]
    assert await _commands_for(database_url, nats_prefix, made) == 1


def _wheel(tmp_path: Path, package: str, content: bytes) -> tuple[Path, pb.WheelUpload]:
    path = tmp_path / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
    path.write_bytes(content)
    header = pb.WheelUpload(
        filename=path.name, sha256=hashlib.sha256(content).hexdigest(), size=len(content)
    )
    return path, header


def _upload(header: pb.WheelUpload, content: bytes) -> Iterator[pb.UploadAndCollectRequest]:
    yield pb.UploadAndCollectRequest(header=header, chunk=content[:10])
    yield pb.UploadAndCollectRequest(chunk=content[10:])


async def test_a_resent_upload_returns_the_same_collection(
    user: ApiClient, tmp_path: Path, database_url: str, nats_prefix: str
) -> None:
    package, rid = _package(), f"rid-{secrets.token_hex(6)}"
    content = secrets.token_bytes(2000)
    _, header = _wheel(tmp_path, package, content)
    header.request_id = rid
    first = await user.collections.UploadAndCollect(_upload(header, content), metadata=user.md)
    again = await user.collections.UploadAndCollect(_upload(header, content), metadata=user.md)
    assert again.collection.id == first.collection.id
    assert await _commands_for(database_url, nats_prefix, first.collection.id) == 1

    # The same key with other bytes (another SHA-256): refused, naming the header's field.
    other = secrets.token_bytes(2000)
    _, changed = _wheel(tmp_path, package, other)
    changed.request_id = rid
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.UploadAndCollect(_upload(changed, other), metadata=user.md)
    _refused_as_reused(err.value, "header.request_id")
    assert await _collections_of(user, package.replace("_", "-")) == [first.collection.id]


def _custom(**fields: Any) -> pb.CollectCustomRequest:
    struct = struct_pb2.Struct()
    struct.update(good_manifest())
    values = {
        "python_interpreter": "/opt/env/bin/python",
        "package_root": "/opt/env/lib/python3.11/site-packages/pkg",
        "source": f"mine-{secrets.token_hex(3)}",
        **fields,
    }
    return pb.CollectCustomRequest(manifest=struct, **values)


async def test_a_retried_custom_collection_returns_the_same_tasks(user: ApiClient) -> None:
    rid = f"rid-{secrets.token_hex(6)}"
    request = _custom(request_id=rid)
    first = await user.collections.CollectCustom(request, metadata=user.md)
    again = await user.collections.CollectCustom(request, metadata=user.md)
    assert [t.id for t in again.tasks] == [t.id for t in first.tasks]
    assert [t.source for t in again.tasks] == [t.source for t in first.tasks]
    assert len(first.tasks) == 3

    changed = pb.CollectCustomRequest()
    changed.CopyFrom(request)
    changed.version = "2.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.CollectCustom(changed, metadata=user.md)
    _refused_as_reused(err.value, "request_id")


async def test_concurrent_custom_collections_with_one_request_id_register_once(
    user: ApiClient,
) -> None:
    request = _custom(request_id=f"rid-{secrets.token_hex(6)}")
    answers = await asyncio.gather(
        *(user.collections.CollectCustom(request, metadata=user.md) for _ in range(RACERS)),
        return_exceptions=True,
    )
    problems = [a for a in answers if isinstance(a, BaseException)]
    assert problems == []
    assert len({tuple(t.id for t in a.tasks) for a in answers}) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["r" * 129, "a\x00b"])
async def test_a_malformed_request_id_is_refused(user: ApiClient, bad: str) -> None:
    package = _package()
    calls = [
        (
            user.collections.CollectPip(
                pb.CollectPipRequest(package=package, package_version="1.0", request_id=bad),
                metadata=user.md,
            ),
            "request_id",
        ),
        (
            user.collections.CollectCustom(_custom(request_id=bad), metadata=user.md),
            "request_id",
        ),
    ]
    content = b"x" * 100
    header = pb.WheelUpload(
        filename=f"{package.replace('-', '_')}-1.0-py3-none-any.whl",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        request_id=bad,
    )
    calls.append(
        (
            user.collections.UploadAndCollect(_upload(header, content), metadata=user.md),
            "header.request_id",
        )
    )
    for call, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, fields = error_details(err.value)
        assert fields == [field]
    assert await _collections_of(user, package) == []


async def test_the_client_sends_a_request_id_and_a_retry_with_it_replays(
    user: ApiClient, api_address: str, tmp_path: Path, database_url: str, nats_prefix: str
) -> None:
    recorder = RequestRecorder()
    package = _package()
    async with Client(
        api_address, credential=Credential(user.email, "secret-pw"), interceptors=[recorder]
    ) as client:
        await client.login()
        made = await client.collect_pip(package, package_version="1.0")
        (sent,) = [r for r in recorder.requests if isinstance(r, pb.CollectPipRequest)]
        assert sent.request_id
        again = await client.collect_pip(package, package_version="1.0", request_id=sent.request_id)
        assert again.id == made.id
        assert await _commands_for(database_url, nats_prefix, made.id) == 1
        tasks = await client.collect_custom(
            good_manifest(), "/opt/env/bin/python", "/opt/env/pkg", f"c-{secrets.token_hex(3)}"
        )
        (custom,) = [r for r in recorder.requests if isinstance(r, pb.CollectCustomRequest)]
        assert custom.request_id and len(tasks) == 3
        # Two uploads of one file are two requests (each its own key): the second is refused
        # as a duplicate, not replayed.
        path, _ = _wheel(tmp_path, _package(), secrets.token_bytes(500))
        await client.upload_and_collect(path)
        with pytest.raises(AlreadyExistsError):
            await client.upload_and_collect(path)
