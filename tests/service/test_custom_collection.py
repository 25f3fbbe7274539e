"""CollectCustom (reference 2.3.0 custom collection): a manifest's tasks registered for a package
already installed, owned by the caller, in one transaction."""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).parents[1] / "collector"))

from wheels import good_manifest  # noqa: E402

from fractal.v2 import task_collection_service_pb2 as pb  # noqa: E402
from fractal.v2 import task_pb2  # noqa: E402
from helpers import ApiClient, error_details  # noqa: E402


def _request(manifest: dict[str, Any], **fields: Any) -> pb.CollectCustomRequest:
    struct = struct_pb2.Struct()
    struct.update(manifest)
    values = {
        "python_interpreter": "/opt/env/bin/python",
        "package_root": "/opt/env/lib/python3.11/site-packages/pkg/",
        "source": f"mine-{secrets.token_hex(3)}",
        **fields,
    }
    return pb.CollectCustomRequest(manifest=struct, **values)


async def test_custom_collection_registers_the_manifest(user: ApiClient, admin: ApiClient) -> None:
    request = _request(good_manifest(), version="0.9")
    got = await user.collections.CollectCustom(request, metadata=user.md)
    me = user.email.split("@")[0]
    assert [t.source for t in got.tasks] == [
        f"{me}:{request.source}:{slug}"
        for slug in ("create_things", "treat_image", "compound_step")
    ]
    create, treat, compound = got.tasks
    assert {t.owner for t in got.tasks} == {me} and create.version == "0.9"
    assert shlex.split(create.command_non_parallel) == [
        "/opt/env/bin/python",
        "/opt/env/lib/python3.11/site-packages/pkg/create.py",
    ]
    assert treat.type == task_pb2.TASK_TYPE_PARALLEL and dict(treat.output_types) == {
        "treated": True
    }
    assert compound.type == task_pb2.TASK_TYPE_COMPOUND
    assert create.args_schema_non_parallel["title"] == "Args"
    # Again: a source in use, nothing more registered.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.CollectCustom(request, metadata=user.md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Without username or slurm_user there is no owner.
    nameless = await admin.new_user(username=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await nameless.collections.CollectCustom(_request(good_manifest()), metadata=nameless.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("manifest", "fields", "field"),
    [
        ({**good_manifest(), "manifest_version": "1"}, {}, "manifest"),
        ({"manifest_version": "2", "task_list": [{"name": "x"}]}, {}, "manifest"),
        (good_manifest(), {"python_interpreter": "python3"}, "python_interpreter"),
        (good_manifest(), {"package_root": "/opt/x y"}, "package_root"),
        (good_manifest(), {"package_root": "/opt/../etc"}, "package_root"),
    ],
)
async def test_custom_collection_refusals(
    user: ApiClient, manifest: dict[str, Any], fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.collections.CollectCustom(_request(manifest, **fields), metadata=user.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err.value)[1] == [field]
