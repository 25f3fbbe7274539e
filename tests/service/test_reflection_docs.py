"""Server reflection serves our protos with their comments, so `grpcurl describe` shows the
documentation; a descriptor set that no longer matches the stubs is not served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from fractal.v2 import job_service_pb2_grpc, task_collection_service_pb2
from fractal_grpc.grpckit.reflection_docs import documented_pool, load_documented
from fractal_grpc.grpckit.server import GrpcServer

GRPCURL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "grpcurl"
SET_FILE = Path(__file__).resolve().parents[2] / "libs" / "fractal" / "descriptors.binpb"


@pytest.fixture(scope="module")
async def port() -> AsyncIterator[int]:
    server = GrpcServer("127.0.0.1:0")
    server.add(
        job_service_pb2_grpc.add_JobServiceServicer_to_server,
        job_service_pb2_grpc.JobServiceServicer(),
        "fractal.v2.JobService",
    )
    yield await server.start()
    await server.stop(0.1)


async def describe(port: int, symbol: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        "-plaintext",
        f"127.0.0.1:{port}",
        "describe",
        symbol,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_describe_shows_service_and_method_comments(port: int) -> None:
    text = await describe(port, "fractal.v2.JobService")
    assert "// Jobs: run a slice of a workflow on a dataset." in text
    assert "FAILED_PRECONDITION (WORKFLOW_EMPTY)" in text


async def test_describe_shows_field_comments_of_imported_files(port: int) -> None:
    request = await describe(port, "fractal.v2.SubmitJobRequest")
    assert "// The workflow to run, of that project; required (> 0)." in request
    job = await describe(port, "fractal.v2.Job")  # job.proto, a dependency of job_service.proto
    assert "A runner has started executing the job" in job


def _documented_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(SET_FILE.read_bytes())


def test_every_generated_file_is_served_with_its_comments() -> None:
    # Importing the stubs registers them; the set written by `make protos` matches all of them.
    assert task_collection_service_pb2.DESCRIPTOR.name
    files = _documented_set().file
    documented = load_documented(_documented_set().SerializeToString())
    registered = [f.name for f in files if f.name in documented]
    assert "fractal/v2/task_collection_service.proto" in registered
    assert all(documented[name].source_code_info.location for name in registered)
    assert documented_pool() is not None
    # Served without protoc's lowerCamelCase json names: grpcurl keeps the proto field names
    # (`access_token`), which the README's walk-through and the reference's JSON use.
    assert _field(_documented_set(), "CollectPipRequest", "package_version").json_name == (
        "packageVersion"
    )
    served = documented["fractal/v2/task_collection_service.proto"]
    assert not any(f.HasField("json_name") for m in served.message_type for f in m.field)


def _field(files: descriptor_pb2.FileDescriptorSet, message: str, field: str) -> Message:
    proto = next(f for f in files.file if f.name == "fractal/v2/task_collection_service.proto")
    msg = next(m for m in proto.message_type if m.name == message)
    return next(f for f in msg.field if f.name == field)


@pytest.mark.parametrize(
    ("change", "served"),
    [
        ("comment", True),  # comments are what the set adds: any text is fine
        ("number", False),  # a field renumbered since the stubs were generated
        ("name", False),  # a field renamed
    ],
)
def test_a_stale_file_is_not_served(change: str, served: bool) -> None:
    assert task_collection_service_pb2.DESCRIPTOR.name
    files = _documented_set()
    field = _field(files, "GetCollectionRequest", "with_log")
    proto = next(f for f in files.file if f.name == "fractal/v2/task_collection_service.proto")
    if change == "comment":
        proto.source_code_info.location[0].leading_comments = " something else\n"
    elif change == "number":
        field.number += 100  # type: ignore[attr-defined]
    else:
        field.name = "with_logs"  # type: ignore[attr-defined]
    documented = load_documented(files.SerializeToString())
    assert ("fractal/v2/task_collection_service.proto" in documented) is served
