"""Test helpers: the SDK client with test-data conveniences, and error-detail readers."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from fractal.v2 import project_pb2, project_service_pb2
from fractal_grpc.client import FractalClient
from fractal_grpc.convert import attributes_to_python, python_to_value
from world import RunningApi


def scalar(value: object) -> struct_pb2.Value:
    """An attribute or filter value (None: JSON null)."""
    target = struct_pb2.Value()
    python_to_value(value, target)  # type: ignore[arg-type]
    return target


def images_by_url(images: Any) -> dict[str, dict[str, Any]]:
    """Images as the reference writes them, by zarr_url: origin (None when unset),
    attributes as plain values, types."""
    return {
        image.zarr_url: {
            "origin": image.origin if image.HasField("origin") else None,
            "attributes": attributes_to_python(image.attributes),
            "types": dict(image.types),
        }
        for image in images
    }


def plain(values: Any) -> list[object]:
    """The Python values of a facet (a ListValue), integral numbers as ints."""
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]


def history_status(status: int) -> str:
    """A history entry's status enum as the reference's word ("done")."""
    return project_pb2.HistoryStatus.Name(status).removeprefix("HISTORY_STATUS_").lower()


class ApiClient(FractalClient):
    """The SDK client plus conveniences that make fresh, uniquely named test data."""

    async def new_user(self, *, verified: bool = True, username: bool = True) -> ApiClient:
        """Create a user through UserService (as this superuser) and log in as it."""
        email = f"user-{secrets.token_hex(4)}@example.org"
        await self.create_user(
            email,
            "secret-pw",
            username=email.split("@")[0] if username else None,
            verified=verified,
        )
        return await ApiClient.login(
            self.channel, email, "secret-pw", internal_channel=self.internal_channel
        )

    async def new_project(self, name: str | None = None) -> Any:
        resp = await self.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=name or f"p-{secrets.token_hex(3)}"),
            metadata=self.md,
        )
        return resp.project


@asynccontextmanager
async def admin_of(api: RunningApi) -> AsyncIterator[ApiClient]:
    """The default superuser of ``api``, with channels to both of its listeners."""
    async with (
        grpc.aio.insecure_channel(api.address) as channel,
        grpc.aio.insecure_channel(api.internal_address) as internal,
    ):
        yield await ApiClient.login(channel, "admin@fractal.xy", "1234", internal_channel=internal)


def error_details(
    err: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    """The ErrorInfo and the violated field names carried by an error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info = None
    fields: list[str] = []
    if status is None:
        return None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return info, fields


class RequestRecorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Keeps every unary request the client sends."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.requests.append(request)
        return await continuation(details, request)
