"""The submit-time rules that depend on the runner's backend (reference §5.1 steps 5, 7, 10).

Pure functions used by ``SubmitJob``; api knows the backend from ``FRACTAL_RUNNER_BACKEND``, the
setting it shares with the runner.
"""

from __future__ import annotations

from collections.abc import Sequence

from fractal_grpc.grpckit.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "check_tasks_runnable",
    "check_user_for_backend",
    "pick_slurm_account",
    "user_working_dir",
]


def check_tasks_runnable(inactive_packages: Sequence[str]) -> None:
    """A job may not use a task of a deactivated package (its environment is gone):
    FAILED_PRECONDITION naming the packages, to be reactivated first."""
    if inactive_packages:
        names = ", ".join(inactive_packages)
        raise FailedPrecondition(
            f"The workflow uses tasks of deactivated task package(s): {names}; "
            "reactivate them first",
            reason="TASK_PACKAGE_INACTIVE",
            metadata={"packages": names},
        )


def check_user_for_backend(backend: str, slurm_user: str | None, cache_dir: str | None) -> None:
    """``slurm_sudo`` (the reference's ``slurm``) runs as the user's ``slurm_user`` in folders
    under the user's ``cache_dir``: both must be set (FAILED_PRECONDITION). Nothing is required
    for ``local`` or ``slurm_ssh`` (one service user there, as in the reference)."""
    if backend == "slurm_sudo" and not (slurm_user and cache_dir):
        raise FailedPrecondition(
            f"runner_backend={backend!r} but user has slurm_user={slurm_user!r} "
            f"and cache_dir={cache_dir!r}",
            reason="USER_NOT_SLURM_READY",
        )


def pick_slurm_account(requested: str | None, accounts: Sequence[str]) -> str | None:
    """The job's SLURM account: the requested one, which must be one of the user's accounts
    (INVALID_ARGUMENT), else the user's first account, else none."""
    if requested is not None:
        if requested not in accounts:
            raise InvalidArgument(
                f"SLURM account '{requested}' is not allowed for this user",
                violations=[("slurm_account", "not one of the user's slurm_accounts")],
            )
        return requested
    return accounts[0] if accounts else None


def user_working_dir(
    backend: str, working_dir: str, cache_dir: str | None, ssh_base_dir: str | None = None
) -> str:
    """The job's user-side folder (``working_dir_user``, reference §5.9/§7.6):
    ``{cache_dir}/{folder name}`` for ``slurm_sudo``, ``{ssh_base_dir}/{folder name}`` for
    ``slurm_ssh`` (FRACTAL_SLURM_SSH_WORKING_BASE_DIR, the remote job folder), the job folder
    itself otherwise (or when that setting is not given)."""
    name = working_dir.rstrip("/").rsplit("/", 1)[-1]
    if backend == "slurm_sudo" and cache_dir:
        return f"{cache_dir.rstrip('/')}/{name}"
    if backend == "slurm_ssh" and ssh_base_dir:
        return f"{ssh_base_dir.rstrip('/')}/{name}"
    return working_dir
