"""AuthService and UserService."""

from __future__ import annotations

from typing import Any

import grpc.aio

from fractal.v2 import auth_service_pb2 as pb
from fractal.v2 import auth_service_pb2_grpc as rpc
from fractal.v2 import user_service_pb2 as upb
from fractal.v2 import user_service_pb2_grpc as urpc
from fractal_api.context import ApiContext
from fractal_api.store import requests, users
from fractal_api.views import user_view
from fractal_grpc.auth.passwords import DUMMY_HASH, verify_password
from fractal_grpc.auth.principal import current_user
from fractal_grpc.db import transaction
from fractal_grpc.grpckit.errors import Unauthenticated, Violations, invalid_field
from fractal_grpc.pagination import decode_token, page_size, split_page


class AuthServicer(rpc.AuthServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def Login(self, request: pb.LoginRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.ctx.reads() as session:
            user = await users.by_email(session, request.email.strip())
        ok = verify_password(user.hashed_password if user else DUMMY_HASH, request.password)
        if user is None or not ok or not user.is_active:
            raise Unauthenticated("Bad credentials", reason="LOGIN_BAD_CREDENTIALS")
        token, lifetime = self.ctx.signer.sign(str(user.id))
        return pb.LoginResponse(access_token=token, token_type="bearer", expires_in=lifetime)

    async def GetCurrentUser(
        self, request: pb.GetCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        me = current_user()
        async with self.ctx.reads() as session:
            user = await users.get(session, me.user_id or 0)
        return pb.GetCurrentUserResponse(user=user_view(user))


class UserServicer(urpc.UserServiceServicer):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def CreateUser(
        self, request: upb.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        fields: dict[str, Any] = {
            "email": request.email,
            "password": request.password,
            "slurm_accounts": list(request.slurm_accounts),
        }
        for name in ("username", "slurm_user", "cache_dir"):
            if request.HasField(name):
                fields[name] = getattr(request, name)
        violations = Violations()
        users.validate_fields(fields, violations)
        violations.raise_if_any()
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
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid_field("update_mask", "must name at least one field")
        fields: dict[str, Any] = {}
        for path in paths:  # each one of the fields the proto's update_mask rule lists
            if path == "password":
                fields["password"] = request.password
                continue
            optional = path in ("slurm_user", "cache_dir", "username")
            if optional and not request.user.HasField(path):  # type: ignore[arg-type]
                fields[path] = None
            else:
                value = getattr(request.user, path)
                fields[path] = list(value) if path == "slurm_accounts" else value
        violations = Violations()
        users.validate_fields(fields, violations)
        violations.raise_if_any()
        async with transaction(self.ctx.sessions) as session:
            user = await users.get(session, request.user_id)
            await users.update(session, user, fields)
        self.ctx.principals.forget(user.id)
        return upb.UpdateUserResponse(user=user_view(user))
