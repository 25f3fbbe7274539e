"""AuthService and UserService."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import field_mask_pb2

from fractal.v2 import auth_service_pb2 as pb
from fractal.v2 import auth_service_pb2_grpc as rpc
from fractal.v2 import user_pb2
from fractal.v2 import user_service_pb2 as upb
from fractal.v2 import user_service_pb2_grpc as urpc
from fractal_api.context import ApiContext
from fractal_api.store import requests, users
from fractal_api.views import user_view
from fractal_grpc.auth.passwords import DUMMY_HASH, verify_password
from fractal_grpc.auth.principal import current_user
from fractal_grpc.data.rules import mask_paths
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import Unauthenticated, Violations
from fractal_grpc.pagination import decode_token, page_size, split_page
from fractal_grpc.users.rules import (
    TEXT_FIELDS,
    check_new_user,
    check_own_update,
    check_user_update,
)


def masked_fields(user: user_pb2.User, mask: field_mask_pb2.FieldMask) -> dict[str, Any]:
    """The values of the User fields ``mask`` names (None for an optional one left unset); an
    empty mask or a field named twice is INVALID_ARGUMENT. The proto rules limit the names."""
    fields: dict[str, Any] = {}
    for path in mask_paths(list(mask.paths)):
        if path == "password":
            fields[path] = ""  # carried beside the User message
        elif path in TEXT_FIELDS and not user.HasField(path):  # type: ignore[arg-type]
            fields[path] = None
        else:
            value = getattr(user, path)
            fields[path] = list(value) if path == "slurm_accounts" else value
    return fields


def _raise(violations: list[tuple[str, str]]) -> None:
    problems = Violations()
    for field, why in violations:
        problems.add(field, why)
    problems.raise_if_any()


class AuthServicer(rpc.AuthServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def Login(self, request: pb.LoginRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.ctx.reads() as session:
            user = await users.by_email(session, request.email.strip())
        ok = verify_password(user.hashed_password if user else DUMMY_HASH, request.password)
        if user is None or not ok or not user.is_active:
            raise Unauthenticated("Bad credentials", reason="LOGIN_BAD_CREDENTIALS")
        token, lifetime = self.ctx.signer.sign(str(user.id), generation=user.token_generation)
        return pb.LoginResponse(access_token=token, token_type="bearer", expires_in=lifetime)

    async def GetCurrentUser(
        self, request: pb.GetCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        me = current_user()
        async with self.ctx.reads() as session:
            user = await users.get(session, me.user_id or 0)
        return pb.GetCurrentUserResponse(user=user_view(user))

    async def UpdateCurrentUser(
        self, request: pb.UpdateCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        user_id = current_user().user_id or 0
        fields, violations = check_own_update(masked_fields(request.user, request.update_mask))
        _raise(violations)
        async with transaction(self.ctx.sessions) as session:
            user = await users.get(session, user_id)
            await users.update(session, user, fields)
        self.ctx.principals.forget(user.id)
        return pb.UpdateCurrentUserResponse(user=user_view(user))


class UserServicer(urpc.UserServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateUser(
        self, request: upb.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        given: dict[str, Any] = {
            "email": request.email,
            "password": request.password,
            "slurm_accounts": list(request.slurm_accounts),
        }
        for name in ("username", "slurm_user", "cache_dir"):
            if request.HasField(name):
                given[name] = getattr(request, name)
        fields, violations = check_new_user(given)
        _raise(violations)
        async with transaction(self.ctx.sessions) as session:
            user = await requests.once(
                session,
                current_user().user_id or 0,
                request,
                create=lambda: users.create(session, **fields),
                replay=lambda earlier: users.get(session, earlier),
            )
        return upb.CreateUserResponse(user=user_view(user))

    async def GetUser(self, request: upb.GetUserRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.ctx.reads() as session:
            user = await users.get(session, request.user_id)
        return upb.GetUserResponse(user=user_view(user))

    async def ListUsers(
        self, request: upb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        size = page_size(request.page_size)
        state = decode_token(request.page_token, "users", ("after",)) or {"after": 0}
        async with self.ctx.reads() as session:
            rows = await users.list_page(session, after_id=state["after"], limit=size + 1)
        page, token = split_page(rows, size, "users", lambda u: {"after": u.id})
        return upb.ListUsersResponse(users=[user_view(u) for u in page], next_page_token=token)

    async def UpdateUser(
        self, request: upb.UpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        given = masked_fields(request.user, request.update_mask)
        if "password" in given:
            given["password"] = request.password
        fields, violations = check_user_update(given)
        _raise(violations)
        async with transaction(self.ctx.sessions) as session:
            user = await users.get(session, request.user_id)
            await users.update(session, user, fields)
        self.ctx.principals.forget(user.id)
        return upb.UpdateUserResponse(user=user_view(user))
