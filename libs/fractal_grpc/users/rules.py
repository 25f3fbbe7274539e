"""The reference's user validators (reference §3.1, §4) as pure functions.

Each ``check_*`` takes the fields a request sets (``None`` = the request unsets it) and returns
the values to store (strings stripped, as the reference's validators return them) and the
violations as ``(field, why)`` pairs; nothing is stored when there is any.

- *Password policy*: 4 to 100 characters.
- *Register* (UserCreate): a valid email, the policy, non-empty ``slurm_user``/``username``/
  ``cache_dir``, ``cache_dir`` absolute, ``slurm_accounts`` items non-empty and unique.
- *Superuser update* (UserUpdate): the same per field, but none of them can be unset, and
  ``slurm_accounts`` is only checked for uniqueness (items are kept as given), as the reference.
- *Current-user update* (UserUpdateStrict): only ``cache_dir`` and ``slurm_accounts``; the other
  fields are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIN_PASSWORD = 4
MAX_PASSWORD = 100
TEXT_FIELDS = ("slurm_user", "username", "cache_dir")
# What a user may change on themselves.
SELF_EDITABLE = ("cache_dir", "slurm_accounts")

Violation = tuple[str, str]


def password_problem(password: str) -> str | None:
    """Why ``password`` breaks the policy, or None."""
    if len(password) < MIN_PASSWORD:
        return f"must have at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"must have at most {MAX_PASSWORD} characters"
    return None


def email_problem(email: str) -> str | None:
    """Why ``email`` is not an address: one "@", a local part, a dotted domain, no spaces."""
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or "@" in domain
        or "." not in domain.strip(".")
        or any(c.isspace() for c in email)
    ):
        return "must be a valid email address"
    return None


def _text(name: str, value: str, out: dict[str, Any], violations: list[Violation]) -> None:
    stripped = value.strip()
    if not stripped:
        violations.append((name, "must not be empty"))
    elif name == "cache_dir" and not stripped.startswith("/"):
        violations.append((name, "must be an absolute path"))
    else:
        out[name] = stripped


def _accounts(value: list[str], *, strip: bool) -> tuple[list[str], list[Violation]]:
    items = [a.strip() for a in value] if strip else list(value)
    problems: list[Violation] = []
    if strip and any(not a for a in items):
        problems.append(("slurm_accounts", "items must not be empty"))
    if len(set(items)) != len(items):
        problems.append(("slurm_accounts", "items must be unique"))
    return items, problems


def _check(
    fields: Mapping[str, Any], *, unset_allowed: bool, strip_accounts: bool
) -> tuple[dict[str, Any], list[Violation]]:
    out: dict[str, Any] = {}
    violations: list[Violation] = []
    for name, value in fields.items():
        if value is None:
            if unset_allowed and name in TEXT_FIELDS:
                out[name] = None
            else:
                violations.append((name, "cannot be unset"))
        elif name == "email":
            problem = email_problem(value)
            if problem:
                violations.append((name, problem))
            else:
                out[name] = value
        elif name == "password":
            problem = password_problem(value)
            if problem:
                violations.append((name, problem))
            else:
                out[name] = value
        elif name in TEXT_FIELDS:
            _text(name, value, out, violations)
        elif name == "slurm_accounts":
            out[name], problems = _accounts(value, strip=strip_accounts)
            violations.extend(problems)
        else:  # the flags: is_active, is_superuser, is_verified
            out[name] = bool(value)
    return out, violations


def check_new_user(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Violation]]:
    """Register: ``fields`` holds email and password, and the optional fields the request sets
    (an optional field it does not set is simply absent)."""
    return _check(fields, unset_allowed=True, strip_accounts=True)


def check_user_update(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Violation]]:
    """A superuser's update of the fields named in the mask."""
    return _check(fields, unset_allowed=False, strip_accounts=False)


def check_own_update(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Violation]]:
    """A user's update of themselves."""
    refused = [(name, "a user cannot change this on themselves") for name in fields]
    refused = [v for v in refused if v[0] not in SELF_EDITABLE]
    out, violations = _check(
        {k: v for k, v in fields.items() if k in SELF_EDITABLE},
        unset_allowed=False,
        strip_accounts=True,
    )
    return out, refused + violations


def ends_old_tokens(fields: Mapping[str, Any]) -> bool:
    """Whether an update ends the user's earlier tokens: a new password does (the reference
    keeps them valid until they expire)."""
    return "password" in fields
