"""Collections through the whole path, with uv and with pip: api records the request and sends
the command, the collector installs from the tests' wheels and registers the tasks (or fails
cleanly), and the record says what happened."""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from collections_api import ENDED, collect, collected, tasks_with_source, watch
from collector_world import CollectorWorld

from fractal.v2 import task_collection_pb2 as cpb
from fractal.v2 import task_collection_service_pb2 as pb
from fractal.v2 import task_pb2
from helpers import ApiClient, error_details

OK, FAILED = cpb.COLLECTION_STATE_OK, cpb.COLLECTION_STATE_FAILED
PY = "3.11"


def _states(messages: list[pb.WatchCollectionResponse]) -> list[int]:
    states: list[int] = []
    for m in messages:
        if not states or states[-1] != m.collection.state:
            states.append(m.collection.state)
    return states


async def test_a_good_package_from_the_index(
    collector: CollectorWorld, verified: ApiClient
) -> None:
    name = f"fractal-tasks-good-{collector.installer}"
    final, messages = await collected(verified, name)
    assert final.state == OK, final.log
    # Newest version of the index (the folder of wheels), recorded with what was asked.
    assert final.package_version == "0.2.0" and not final.HasField("requested_version")
    assert _states(messages) == [
        cpb.COLLECTION_STATE_PENDING,
        cpb.COLLECTION_STATE_INSTALLING,
        OK,
    ] or _states(messages) == [cpb.COLLECTION_STATE_INSTALLING, OK]
    assert "".join(m.new_log for m in messages) == final.log
    env = collector.tasks_dir / ".fractal" / f"{name}0.2.0"
    assert final.env_dir == str(env) and (env / "venv" / "bin" / "python").exists()
    assert f"{name}==0.2.0" in final.freeze
    source = f"pip_remote:{name.replace('-', '_')}:0.2.0::py{PY}"
    assert final.source == source
    tasks = {t.source: t for t in await tasks_with_source(verified, source + ":")}
    assert sorted(tasks) == sorted(
        f"{source}:{slug}" for slug in ("create_things", "treat_image", "compound_step")
    )
    assert sorted(final.task_ids) == sorted(t.id for t in tasks.values())
    create = tasks[f"{source}:create_things"]
    treat = tasks[f"{source}:treat_image"]
    compound = tasks[f"{source}:compound_step"]
    assert (create.type, treat.type, compound.type) == (
        task_pb2.TASK_TYPE_NON_PARALLEL,
        task_pb2.TASK_TYPE_PARALLEL,
        task_pb2.TASK_TYPE_COMPOUND,
    )
    assert not create.HasField("owner") and create.version == "0.2.0"
    assert create.args_schema_non_parallel["title"] == "Args"
    assert compound.args_schema_parallel["type"] == "object"
    assert create.args_schema_version == "pydantic_v1"
    assert dict(treat.output_types) == {"treated": True}
    python, script = shlex.split(compound.command_parallel)
    assert python == str(env / "venv" / "bin" / "python")
    assert Path(script).is_file() and Path(script).name == "step.py"
    assert shlex.split(compound.command_non_parallel)[1].endswith("/step_init.py")
    # Without the log unless asked for.
    plain = await verified.collections.GetCollection(
        pb.GetCollectionRequest(collection_id=final.id), metadata=verified.md
    )
    assert not plain.collection.HasField("log")

    # The same package again (by name, or by the version it resolved to): ALREADY_EXISTS.
    for fields in ({}, {"package_version": "0.2.0"}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(verified, name, **fields)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info, _ = error_details(err.value)
        assert info is not None and info.metadata["collection_id"] == str(final.id)


async def test_a_wheel_by_path(collector: CollectorWorld, verified: ApiClient) -> None:
    final, _ = await collected(verified, str(collector.wheels["good"]))
    assert final.state == OK, final.log
    name = f"fractal-tasks-good-{collector.installer}"
    assert (final.package_name, final.package_version) == (name, "0.1.0")
    assert final.source == f"pip_local:{name.replace('-', '_')}:0.1.0::py{PY}"
    assert len(await tasks_with_source(verified, final.source + ":")) == 3


async def test_a_non_canonical_name(collector: CollectorWorld, verified: ApiClient) -> None:
    final, _ = await collected(
        verified,
        f"Fractal_Tasks-Foo_{collector.installer}",
        pinned_package_versions={f"fractal-tasks-bare-{collector.installer}": "1.0.0"},
    )
    assert final.state == OK, final.log
    name = f"fractal-tasks-foo-{collector.installer}"
    assert final.package_name == name
    assert final.source == f"pip_remote:{name.replace('-', '_')}:0.3.0::py{PY}"
    assert len(await tasks_with_source(verified, final.source + ":")) == 3
    # A pin constrains; it does not add a package that nothing needs.
    assert "fractal-tasks-bare" not in final.freeze


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("v1", "manifest_version 1"),
        ("no_manifest", "has no __FRACTAL_MANIFEST__.json"),
        ("invalid", "not readable JSON"),
        ("bad_schema", "needs executable_non_parallel or executable_parallel"),
        ("missing_exe", "executable step_init.py is missing"),
    ],
)
async def test_a_package_that_cannot_be_collected(
    collector: CollectorWorld, verified: ApiClient, fixture: str, message: str
) -> None:
    wheel = collector.wheels[fixture]
    final, _ = await collected(verified, str(wheel))
    assert final.state == FAILED
    assert message in final.error and message in final.log
    assert "Installed" in final.log or "Successfully installed" in final.log  # installer output
    assert not final.task_ids
    assert (
        await tasks_with_source(verified, f"pip_local:{final.package_name.replace('-', '_')}:")
        == []
    )
    assert final.HasField("env_dir")
    assert not Path(final.env_dir).exists()  # removed
    if fixture == "v1":  # a failed collection does not block a new one (which fails alike)
        again, _ = await collected(verified, str(wheel))
        assert again.id != final.id and again.state == FAILED


async def test_a_package_the_index_does_not_have(
    collector: CollectorWorld, verified: ApiClient
) -> None:
    final, _ = await collected(verified, f"fractal-tasks-nowhere-{collector.installer}")
    assert final.state == FAILED
    assert "Cannot find package" in final.error
    assert not final.HasField("env_dir")


async def test_concurrent_collections_of_one_package(
    collector: CollectorWorld, verified: ApiClient, admin: ApiClient
) -> None:
    wheel = str(collector.wheels["race"])
    outcomes = await asyncio.gather(
        *(collect(u, wheel) for u in (verified, admin, verified)), return_exceptions=True
    )
    made = [o for o in outcomes if isinstance(o, cpb.TaskCollection)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(made) == 1 and len(refused) == 2
    for err in refused:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        info, _ = error_details(err)
        assert info is not None and info.metadata["collection_id"] == str(made[0].id)
    final, _ = await collected_by_id(verified, made[0].id)
    assert final.state == OK, final.log


async def collected_by_id(user: ApiClient, collection_id: int) -> tuple[cpb.TaskCollection, None]:
    messages = await watch(user, collection_id)
    assert messages[-1].collection.state in ENDED
    got = await user.collections.GetCollection(
        pb.GetCollectionRequest(collection_id=collection_id, with_log=True), metadata=user.md
    )
    return got.collection, None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"package": "pkg; rm -rf /"}, "package"),
        ({"package": "pkg", "package_version": "1.0 || true"}, "package_version"),
        ({"package": "pkg", "package_extras": "a b"}, "package_extras"),
        ({"package": "pkg", "python_version": "3.9"}, "python_version"),
        (
            {"package": "pkg", "pinned_package_versions": {"dep": "$(id)"}},
            "pinned_package_versions[dep]",
        ),
        ({"package": "/x/pkg-1.0-py3-none-any.whl", "package_version": "1.0"}, "package_version"),
        ({"package": "x/pkg-1.0-py3-none-any.whl"}, "package"),
    ],
)
async def test_refused_requests_record_nothing(
    collector: CollectorWorld, verified: ApiClient, fields: dict[str, object], field: str
) -> None:
    before = await verified.collections.ListCollections(
        pb.ListCollectionsRequest(page_size=1), metadata=verified.md
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await verified.collections.CollectPip(pb.CollectPipRequest(**fields), metadata=verified.md)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields_named = error_details(err.value)
    assert fields_named == [field]
    after = await verified.collections.ListCollections(
        pb.ListCollectionsRequest(page_size=1), metadata=verified.md
    )
    assert [c.id for c in after.collections] == [c.id for c in before.collections]


def _upload_messages(
    content: bytes, filename: str, *, sha256: str | None = None, size: int | None = None
) -> list[pb.UploadAndCollectRequest]:
    header = pb.WheelUpload(
        filename=filename,
        sha256=sha256 or hashlib.sha256(content).hexdigest(),
        size=size if size is not None else len(content),
    )
    parts = [content[i : i + 1000] for i in range(0, len(content), 1000)]
    return [pb.UploadAndCollectRequest(header=header, chunk=parts[0])] + [
        pb.UploadAndCollectRequest(chunk=part) for part in parts[1:]
    ]


async def _upload(
    user: ApiClient, messages: list[pb.UploadAndCollectRequest]
) -> cpb.TaskCollection:
    async def requests() -> AsyncIterator[pb.UploadAndCollectRequest]:
        for message in messages:
            yield message

    resp = await user.collections.UploadAndCollect(requests(), metadata=user.md)
    return resp.collection


async def test_an_uploaded_wheel(collector: CollectorWorld, verified: ApiClient) -> None:
    wheel = collector.wheels["upload"]
    content = wheel.read_bytes()
    refusals = [
        (_upload_messages(content, wheel.name, sha256="0" * 64), "header.sha256"),
        (_upload_messages(content, wheel.name, size=len(content) + 1), "header.size"),
        (_upload_messages(content, wheel.name, size=len(content) - 1), "chunk"),
        (_upload_messages(content, wheel.name, size=10**12), "header.size"),
        (_upload_messages(content, "not-a-wheel.whl"), "header.filename"),
    ]
    for messages, field in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _upload(verified, messages)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error_details(err.value)[1] == [field]
    made = await _upload(verified, _upload_messages(content, wheel.name))
    assert made.uploaded_wheel == wheel.name and not made.HasField("wheel_path")
    messages = await watch(verified, made.id)
    final = messages[-1].collection
    assert final.state == OK
    name = f"fractal-tasks-upload-{collector.installer}"
    assert final.source == f"pip_local:{name.replace('-', '_')}:2.1.0::py{PY}"
    assert len(await tasks_with_source(verified, final.source + ":")) == 3
    assert (Path(final.env_dir) / wheel.name).read_bytes() == content
    # The same wheel again: ALREADY_EXISTS, as for a path.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _upload(verified, _upload_messages(content, wheel.name))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
