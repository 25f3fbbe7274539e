"""AuthService, UserService, ProjectService and DatasetService against a real api + Postgres."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from fractal.v2 import (
    auth_service_pb2,
    dataset_service_pb2,
    image_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    user_service_pb2,
)
from helpers import ApiClient, error_details


async def test_login_and_current_user(admin: ApiClient) -> None:
    resp = await admin.auth.GetCurrentUser(
        auth_service_pb2.GetCurrentUserRequest(), metadata=admin.md
    )
    assert resp.user.email == "admin@fractal.xy"
    assert resp.user.is_superuser and resp.user.is_verified


async def test_login_is_case_insensitive_on_email(channel: grpc.aio.Channel) -> None:
    client = await ApiClient.login(channel, "ADMIN@fractal.xy", "1234")
    assert client.token


@pytest.mark.parametrize("email,password", [("admin@fractal.xy", "wrong"), ("nobody@x.y", "1234")])
async def test_bad_credentials(channel: grpc.aio.Channel, email: str, password: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ApiClient.login(channel, email, password)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "LOGIN_BAD_CREDENTIALS"


def _forged_tokens(key_env: dict[str, str]) -> list[str]:
    now = int(time.time())
    claims = {"sub": "1", "aud": "fractal-api", "exp": now + 60, "iat": now}
    other = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    real = Path(key_env["FRACTAL_JWT_PRIVATE_KEY_FILE"]).read_text()
    return [
        "not-a-token",
        jwt.encode(claims, None, algorithm="none"),
        jwt.encode(claims, other, algorithm="EdDSA"),
        jwt.encode({**claims, "exp": now - 10}, real, algorithm="EdDSA"),
        jwt.encode({**claims, "aud": "somebody-else"}, real, algorithm="EdDSA"),
        jwt.encode({**claims, "aud": "fractal-internal"}, real, algorithm="EdDSA"),
        jwt.encode({**claims, "aud": "fractal-internal"}, other, algorithm="EdDSA"),
    ]


async def test_forged_expired_and_foreign_tokens_are_refused(
    channel: grpc.aio.Channel, key_env: dict[str, str]
) -> None:
    for token in [*_forged_tokens(key_env), ""]:
        client = ApiClient(channel, token)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.projects.ListProjects(
                project_service_pb2.ListProjectsRequest(), metadata=client.md if token else ()
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token


async def test_a_service_token_is_no_user(
    channel: grpc.aio.Channel, service_md: tuple[tuple[str, str], ...]
) -> None:
    """A valid token of the wrong kind is authenticated but not allowed: PERMISSION_DENIED."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await project_service_pb2_grpc.ProjectServiceStub(channel).ListProjects(
            project_service_pb2.ListProjectsRequest(), metadata=service_md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "USER_TOKEN_REQUIRED"


async def test_user_admin_needs_superuser(user: ApiClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.users.ListUsers(user_service_pb2.ListUsersRequest(), metadata=user.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_create_user_validation_and_duplicates(admin: ApiClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.users.CreateUser(
            user_service_pb2.CreateUserRequest(email="bad", password="x", cache_dir="rel/path"),
            metadata=admin.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields = error_details(err.value)
    assert set(fields) == {"email", "password", "cache_dir"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.users.CreateUser(
            user_service_pb2.CreateUserRequest(email="Admin@Fractal.xy", password="12345"),
            metadata=admin.md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_projects_membership_and_pagination(user: ApiClient, admin: ApiClient) -> None:
    created = [await user.new_project(f"proj-{i}") for i in range(5)]
    seen: list[int] = []
    token = ""
    while True:
        page = await user.projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=2, page_token=token),
            metadata=user.md,
        )
        assert len(page.projects) <= 2
        seen += [p.id for p in page.projects]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.id for p in created]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.new_project("proj-0")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Another user's project answers exactly like a missing one (even to a superuser, who
    # is no member either, as in the reference).
    answers = []
    for project_id in (created[0].id, 10**12):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.projects.GetProject(
                project_service_pb2.GetProjectRequest(project_id=project_id), metadata=admin.md
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        info, _ = error_details(err.value)
        assert info is not None
        answers.append((err.value.details(), info.reason, dict(info.metadata)))
    assert answers == [
        ("Project not found", "NOT_FOUND", {"project_id": str(created[0].id)}),
        ("Project not found", "NOT_FOUND", {"project_id": "1000000000000"}),
    ]


async def test_create_project_is_idempotent_with_request_id(user: ApiClient) -> None:
    req = project_service_pb2.CreateProjectRequest(name="idem", request_id="req-1")
    first = await user.projects.CreateProject(req, metadata=user.md)
    second = await user.projects.CreateProject(req, metadata=user.md)
    assert first.project.id == second.project.id


async def test_dataset_zarr_dir_rules(user: ApiClient) -> None:
    project = await user.new_project()
    ok = await user.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="ds", zarr_dir="/data/x/../zarr/"
        ),
        metadata=user.md,
    )
    assert ok.dataset.zarr_dir == "/data/zarr"
    for zarr_dir, fragment in [("relative/dir", "must begin with"), ("s3://bucket", "S3")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await user.datasets.CreateDataset(
                dataset_service_pb2.CreateDatasetRequest(
                    project_id=project.id, name="ds", zarr_dir=zarr_dir
                ),
                metadata=user.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in (err.value.details() or "")
        _, fields = error_details(err.value)
        assert fields == ["zarr_dir"]
    listed = await user.datasets.ListDatasets(
        dataset_service_pb2.ListDatasetsRequest(project_id=project.id), metadata=user.md
    )
    assert [d.id for d in listed.datasets] == [ok.dataset.id]


async def test_dataset_filter_keys_validated(user: ApiClient) -> None:
    project = await user.new_project()
    filters = image_pb2.Filters(types={" ": True})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await user.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project.id, name="ds", zarr_dir="/z", filters=filters
            ),
            metadata=user.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await user.datasets.ListDatasets(
        dataset_service_pb2.ListDatasetsRequest(project_id=project.id), metadata=user.md
    )
    assert len(listed.datasets) == 0


async def test_dataset_of_another_users_project(user: ApiClient, admin: ApiClient) -> None:
    project = await user.new_project()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.datasets.CreateDataset(
            dataset_service_pb2.CreateDatasetRequest(
                project_id=project.id, name="d", zarr_dir="/z"
            ),
            metadata=admin.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
