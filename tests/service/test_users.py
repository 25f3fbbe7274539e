"""Users (reference §3.1, §4): register, list, get, update, the current user's own update, and
what happens to a user's tokens when they are deactivated or their password changes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from google.protobuf import field_mask_pb2

from fractal.v2 import (
    auth_service_pb2,
    dataset_service_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    user_pb2,
    workflow_service_pb2,
)
from fractal.v2 import user_service_pb2 as upb
from helpers import ApiClient, error_details


def _email() -> str:
    return f"u-{secrets.token_hex(4)}@example.org"


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def _register(admin: ApiClient, **kw: object) -> user_pb2.User:
    resp = await admin.users.CreateUser(
        upb.CreateUserRequest(email=_email(), password="secret-pw", **kw),  # type: ignore[arg-type]
        metadata=admin.md,
    )
    return resp.user


async def _update(
    admin: ApiClient, user_id: int, user: user_pb2.User, *paths: str, **kw: Any
) -> upb.UpdateUserResponse:
    return await admin.users.UpdateUser(
        upb.UpdateUserRequest(user_id=user_id, user=user, update_mask=_mask(*paths), **kw),  # type: ignore[arg-type]
        metadata=admin.md,
    )


async def _refused(call: Awaitable[Any], code: grpc.StatusCode) -> tuple[str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info, fields = error_details(err.value)
    return (info.reason if info else ""), fields


async def _me(client: ApiClient) -> user_pb2.User:
    resp = await client.auth.GetCurrentUser(
        auth_service_pb2.GetCurrentUserRequest(), metadata=client.md
    )
    return resp.user


async def test_register_makes_an_active_plain_unverified_user(admin: ApiClient) -> None:
    user = await _register(
        admin, username=" alice ", cache_dir="/data/alice", slurm_accounts=["a", "b"]
    )
    assert user.is_active and not user.is_superuser and not user.is_verified
    assert user.username == "alice"  # stripped, as the reference's validators
    assert list(user.slurm_accounts) == ["a", "b"]
    got = await admin.users.GetUser(upb.GetUserRequest(user_id=user.id), metadata=admin.md)
    assert got.user == user


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"password": "abc"}, "password"),
        ({"username": "  "}, "username"),
        ({"slurm_user": ""}, "slurm_user"),
        ({"cache_dir": "relative/dir"}, "cache_dir"),
        ({"slurm_accounts": ["a", "a"]}, "slurm_accounts"),
        ({"slurm_accounts": ["a", " "]}, "slurm_accounts"),
    ],
)
async def test_register_validators(admin: ApiClient, kw: dict[str, object], field: str) -> None:
    email = _email()
    request = upb.CreateUserRequest(email=email, **{"password": "secret-pw", **kw})  # type: ignore[arg-type]
    _, fields = await _refused(
        admin.users.CreateUser(request, metadata=admin.md), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert fields == [field]
    with pytest.raises(grpc.aio.AioRpcError):  # nothing was created
        await ApiClient.login(admin.channel, email, "secret-pw")


async def test_list_users_returns_each_user_once(admin: ApiClient) -> None:
    created = {(await _register(admin)).id for _ in range(5)}
    seen: list[int] = []
    token = ""
    while True:
        page = await admin.users.ListUsers(
            upb.ListUsersRequest(page_size=2, page_token=token), metadata=admin.md
        )
        seen += [u.id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) and created <= set(seen)
    assert seen == sorted(seen)


async def test_update_every_field(admin: ApiClient) -> None:
    user = await _register(admin)
    new_email = _email()
    values = user_pb2.User(
        email=new_email,
        is_active=True,
        is_superuser=True,
        is_verified=True,
        slurm_user="slurm-u",
        cache_dir="/cache/u",
        username="someone",
        slurm_accounts=["x", "y"],
    )
    paths = [
        "email",
        "is_superuser",
        "is_verified",
        "slurm_user",
        "cache_dir",
        "username",
        "slurm_accounts",
        "password",
    ]
    updated = (await _update(admin, user.id, values, *paths, password="other-pw")).user
    assert updated.email == new_email and updated.is_superuser and updated.is_verified
    assert (updated.slurm_user, updated.cache_dir, updated.username) == (
        "slurm-u",
        "/cache/u",
        "someone",
    )
    assert list(updated.slurm_accounts) == ["x", "y"]
    client = await ApiClient.login(admin.channel, new_email, "other-pw")
    assert (await _me(client)).id == user.id


@pytest.mark.parametrize(
    ("values", "paths", "password", "field"),
    [
        (user_pb2.User(), ("slurm_user",), "", "slurm_user"),  # cannot be unset
        (user_pb2.User(), ("cache_dir",), "", "cache_dir"),
        (user_pb2.User(), ("username",), "", "username"),
        (user_pb2.User(cache_dir="rel"), ("cache_dir",), "", "cache_dir"),
        (user_pb2.User(email="nope"), ("email",), "", "email"),
        (user_pb2.User(), ("password",), "abc", "password"),
        (user_pb2.User(slurm_accounts=["a", "a"]), ("slurm_accounts",), "", "slurm_accounts"),
    ],
)
async def test_update_validators_change_nothing(
    admin: ApiClient, values: user_pb2.User, paths: tuple[str, ...], password: str, field: str
) -> None:
    user = await _register(admin, username="kept", cache_dir="/kept", slurm_user="kept")
    _, fields = await _refused(
        _update(admin, user.id, values, *paths, password=password),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == [field]
    got = await admin.users.GetUser(upb.GetUserRequest(user_id=user.id), metadata=admin.md)
    assert got.user == user


async def test_update_refusals(admin: ApiClient) -> None:
    user = await _register(admin)
    other = await _register(admin)
    reason, _ = await _refused(
        _update(admin, user.id, user_pb2.User(email=other.email.upper()), "email"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert reason == "USER_EXISTS"
    await _refused(
        _update(admin, 10**12, user_pb2.User(is_verified=True), "is_verified"),
        grpc.StatusCode.NOT_FOUND,
    )
    await _refused(_update(admin, user.id, user_pb2.User()), grpc.StatusCode.INVALID_ARGUMENT)
    await _refused(
        _update(admin, user.id, user_pb2.User(id=5), "id"), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_current_user_changes_only_cache_dir_and_accounts(admin: ApiClient) -> None:
    client = await admin.new_user()
    before = await _me(client)
    resp = await client.auth.UpdateCurrentUser(
        auth_service_pb2.UpdateCurrentUserRequest(
            user=user_pb2.User(cache_dir=" /mine ", slurm_accounts=["p", "q"]),
            update_mask=_mask("cache_dir", "slurm_accounts"),
        ),
        metadata=client.md,
    )
    assert resp.user.cache_dir == "/mine" and list(resp.user.slurm_accounts) == ["p", "q"]
    for values, paths in [
        (user_pb2.User(is_superuser=True), ("is_superuser",)),
        (user_pb2.User(email=_email()), ("email",)),
        (user_pb2.User(username="x", cache_dir="/y"), ("username", "cache_dir")),
        (user_pb2.User(), ("cache_dir",)),  # cannot be unset
        (user_pb2.User(cache_dir="relative"), ("cache_dir",)),
        (user_pb2.User(slurm_accounts=["a", "a"]), ("slurm_accounts",)),
        (user_pb2.User(cache_dir="/z"), ()),
    ]:
        await _refused(
            client.auth.UpdateCurrentUser(
                auth_service_pb2.UpdateCurrentUserRequest(user=values, update_mask=_mask(*paths)),
                metadata=client.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    after = await _me(client)
    assert after.cache_dir == "/mine" and not after.is_superuser
    assert (after.email, after.username) == (before.email, before.username)


async def test_deactivation_ends_the_users_tokens_at_once(admin: ApiClient) -> None:
    client = await admin.new_user()
    assert (await _me(client)).is_active
    await _update(admin, (await _me(client)).id, user_pb2.User(is_active=False), "is_active")
    await _refused(
        client.projects.ListProjects(project_service_pb2.ListProjectsRequest(), metadata=client.md),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    reason, _ = await _refused(
        ApiClient.login(admin.channel, (await admin_lookup(admin, client)).email, "secret-pw"),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert reason == "LOGIN_BAD_CREDENTIALS"


async def admin_lookup(admin: ApiClient, client: ApiClient) -> user_pb2.User:
    """The user of ``client``, read by the superuser (the client's own token may be dead)."""
    user_id = int(jwt.decode(client.token, options={"verify_signature": False})["sub"])
    resp = await admin.users.GetUser(upb.GetUserRequest(user_id=user_id), metadata=admin.md)
    return resp.user


async def test_a_new_password_ends_older_tokens(admin: ApiClient) -> None:
    client = await admin.new_user()
    me = await _me(client)
    second = await ApiClient.login(admin.channel, me.email, "secret-pw")
    await _update(admin, me.id, user_pb2.User(), "password", password="brand-new")
    for old in (client, second):
        reason, _ = await _refused(_me(old), grpc.StatusCode.UNAUTHENTICATED)
        assert reason == "TOKEN_REVOKED"
    await _refused(
        ApiClient.login(admin.channel, me.email, "secret-pw"), grpc.StatusCode.UNAUTHENTICATED
    )
    fresh = await ApiClient.login(admin.channel, me.email, "brand-new")
    assert (await _me(fresh)).id == me.id
    # Other changes keep the tokens: only a password change ends them.
    await _update(admin, me.id, user_pb2.User(username="renamed"), "username")
    assert (await _me(fresh)).username == "renamed"


async def test_an_unverified_superuser_is_not_verified(admin: ApiClient) -> None:
    """As the reference: being a superuser does not stand in for being verified."""
    boss = await admin.new_user(verified=False)
    await _update(admin, (await _me(boss)).id, user_pb2.User(is_superuser=True), "is_superuser")
    listed = await boss.users.ListUsers(upb.ListUsersRequest(page_size=1), metadata=boss.md)
    assert listed.users  # a superuser now
    reason, _ = await _refused(
        boss.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                name="t", source=f"s-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
            ),
            metadata=boss.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert reason == "USER_NOT_VERIFIED"


async def test_verified_gating(admin: ApiClient) -> None:
    plain = await admin.new_user(verified=False)
    reason, _ = await _refused(
        plain.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                name="t", source=f"s-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
            ),
            metadata=plain.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert reason == "USER_NOT_VERIFIED"
    await _update(admin, (await _me(plain)).id, user_pb2.User(is_verified=True), "is_verified")
    created = await plain.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="t", source=f"s-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
        ),
        metadata=plain.md,
    )
    assert created.task.id > 0


async def test_a_new_password_ends_open_streams(runnerless_admin: ApiClient) -> None:
    """An open WatchJob of the user ends at once (no runner here: the job stays SUBMITTED)."""
    admin = runnerless_admin
    client = await admin.new_user()
    me = await _me(client)
    project = await client.new_project()
    ds = await client.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(project_id=project.id, name="d", zarr_dir="/z"),
        metadata=client.md,
    )
    task = await client.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="t", source=f"s-{secrets.token_hex(4)}", command_non_parallel="/bin/true"
        ),
        metadata=client.md,
    )
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=client.md,
    )
    await client.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wf.workflow.id, task_id=task.task.id
        ),
        metadata=client.md,
    )
    job = await client.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
        ),
        metadata=client.md,
    )
    watch = client.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(project_id=project.id, job_id=job.job.id),
        metadata=client.md,
        timeout=30,
    )
    first = await watch.read()
    assert isinstance(first, job_service_pb2.WatchJobResponse)
    started = time.monotonic()
    await _update(admin, me.id, user_pb2.User(), "password", password="changed-pw")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await watch.read()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 1.5  # at once, not at the 2 s re-check
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "TOKEN_REVOKED"
