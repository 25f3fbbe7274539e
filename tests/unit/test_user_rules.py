"""The reference's user validators and password policy (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_grpc.users import rules


@pytest.mark.parametrize(
    ("password", "ok"),
    [("", False), ("abc", False), ("abcd", True), ("x" * 100, True), ("x" * 101, False)],
)
def test_password_policy(password: str, ok: bool) -> None:
    assert (rules.password_problem(password) is None) is ok


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("a@b.c", True),
        ("admin@fractal.xy", True),
        ("bad", False),
        ("@b.c", False),
        ("a@", False),
        ("a@b", False),
        ("a@b@c.d", False),
        (" a@b.c", False),
        ("a b@c.d", False),
    ],
)
def test_email(email: str, ok: bool) -> None:
    assert (rules.email_problem(email) is None) is ok


NEW = {"email": "a@b.c", "password": "1234"}


@pytest.mark.parametrize(
    ("extra", "stored", "bad"),
    [
        ({}, {"email": "a@b.c", "password": "1234"}, set()),
        ({"username": "  me "}, {"username": "me"}, set()),
        ({"slurm_user": " "}, {}, {"slurm_user"}),
        ({"username": ""}, {}, {"username"}),
        ({"cache_dir": "/data/me "}, {"cache_dir": "/data/me"}, set()),
        ({"cache_dir": "rel/path"}, {}, {"cache_dir"}),
        ({"slurm_accounts": [" a", "b"]}, {"slurm_accounts": ["a", "b"]}, set()),
        ({"slurm_accounts": ["a", " a "]}, {}, {"slurm_accounts"}),
        ({"slurm_accounts": ["a", " "]}, {}, {"slurm_accounts"}),
        ({"password": "123"}, {}, {"password"}),
        ({"email": "nope"}, {}, {"email"}),
    ],
)
def test_new_user(extra: dict[str, Any], stored: dict[str, Any], bad: set[str]) -> None:
    out, violations = rules.check_new_user({**NEW, **extra})
    assert {field for field, _ in violations} == bad
    if not bad:
        for name, value in stored.items():
            assert out[name] == value


@pytest.mark.parametrize(
    ("fields", "stored", "bad"),
    [
        ({"is_active": False}, {"is_active": False}, set()),
        ({"is_superuser": True, "is_verified": True}, {"is_superuser": True}, set()),
        ({"is_active": None}, {}, {"is_active"}),
        ({"email": None}, {}, {"email"}),
        ({"password": None}, {}, {"password"}),
        # the reference's non-empty validators refuse None: these cannot be unset
        ({"slurm_user": None}, {}, {"slurm_user"}),
        ({"username": None}, {}, {"username"}),
        ({"cache_dir": None}, {}, {"cache_dir"}),
        ({"cache_dir": "relative"}, {}, {"cache_dir"}),
        ({"password": "abc"}, {}, {"password"}),
        ({"password": "abcd"}, {"password": "abcd"}, set()),
        # on update, accounts are only checked for repeats and kept as given
        ({"slurm_accounts": [" a", ""]}, {"slurm_accounts": [" a", ""]}, set()),
        ({"slurm_accounts": ["a", "a"]}, {}, {"slurm_accounts"}),
    ],
)
def test_user_update(fields: dict[str, Any], stored: dict[str, Any], bad: set[str]) -> None:
    out, violations = rules.check_user_update(fields)
    assert {field for field, _ in violations} == bad
    for name, value in stored.items():
        assert out[name] == value


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"cache_dir": "/x"}, set()),
        ({"slurm_accounts": ["a", "b"]}, set()),
        ({"slurm_accounts": []}, set()),
        ({"cache_dir": "x"}, {"cache_dir"}),
        ({"cache_dir": None}, {"cache_dir"}),
        ({"slurm_accounts": ["a", "a"]}, {"slurm_accounts"}),
        ({"is_superuser": True}, {"is_superuser"}),
        ({"email": "a@b.c", "cache_dir": "/x"}, {"email"}),
        ({"password": "abcd"}, {"password"}),
    ],
)
def test_own_update_only_cache_dir_and_accounts(fields: dict[str, Any], bad: set[str]) -> None:
    out, violations = rules.check_own_update(fields)
    assert {field for field, _ in violations} == bad
    assert set(out) <= set(rules.SELF_EDITABLE)


@pytest.mark.parametrize(
    ("fields", "ends"),
    [({"password": "abcd"}, True), ({"email": "a@b.c"}, False), ({"is_active": False}, False)],
)
def test_a_new_password_ends_old_tokens(fields: dict[str, Any], ends: bool) -> None:
    assert rules.ends_old_tokens(fields) is ends
