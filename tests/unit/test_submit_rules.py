"""Submit-time rules that depend on the backend (reference §5.1): table-driven."""

from __future__ import annotations

import pytest

from fractal_api.submit_rules import (
    check_tasks_runnable,
    check_user_for_backend,
    pick_slurm_account,
    user_working_dir,
)
from fractal_grpc.grpckit.errors import FailedPrecondition, InvalidArgument
from fractal_grpc.settings import ApiSettings, RunnerSettings


@pytest.mark.parametrize(
    ("backend", "slurm_user", "cache_dir", "refused"),
    [
        ("local", None, None, False),
        ("slurm_ssh", None, None, False),
        ("slurm_sudo", "u", "/c", False),
        ("slurm_sudo", None, "/c", True),
        ("slurm_sudo", "u", None, True),
        ("slurm_sudo", "", "", True),
    ],
)
def test_slurm_sudo_needs_slurm_user_and_cache_dir(backend, slurm_user, cache_dir, refused):
    if refused:
        with pytest.raises(FailedPrecondition, match="slurm_user"):
            check_user_for_backend(backend, slurm_user, cache_dir)
    else:
        check_user_for_backend(backend, slurm_user, cache_dir)


@pytest.mark.parametrize(
    ("requested", "accounts", "expected"),
    [
        (None, [], None),
        (None, ["a", "b"], "a"),
        ("b", ["a", "b"], "b"),
        ("x", ["a", "b"], InvalidArgument),
        ("x", [], InvalidArgument),
    ],
)
def test_slurm_account(requested, accounts, expected):
    if expected is InvalidArgument:
        with pytest.raises(InvalidArgument, match="not allowed"):
            pick_slurm_account(requested, accounts)
    else:
        assert pick_slurm_account(requested, accounts) == expected


@pytest.mark.parametrize(
    ("backend", "cache_dir", "ssh_base", "expected"),
    [
        ("local", "/c", "/r", "/base/proj_1"),
        ("slurm_ssh", "/c", None, "/base/proj_1"),
        ("slurm_ssh", "/c", "/remote/jobs/", "/remote/jobs/proj_1"),
        ("slurm_sudo", "/c/", "/r", "/c/proj_1"),
        ("slurm_sudo", None, "/r", "/base/proj_1"),
    ],
)
def test_user_working_dir(backend, cache_dir, ssh_base, expected):
    assert user_working_dir(backend, "/base/proj_1", cache_dir, ssh_base) == expected


@pytest.mark.parametrize(("given", "kept"), [("slurm", "slurm_sudo"), ("slurm_sudo", "slurm_sudo")])
def test_backend_names_shared_by_api_and_runner(given, kept, tmp_path):
    config = tmp_path / "slurm.json"
    config.write_text("{}")
    assert ApiSettings(runner_backend=given).runner_backend == kept
    runner = RunnerSettings(
        runner_backend=given, slurm_config_file=config, slurm_worker_python="/usr/bin/python3"
    )
    assert runner.runner_backend == kept


def test_runner_slurm_settings_are_required(tmp_path):
    with pytest.raises(ValueError, match="FRACTAL_SLURM_CONFIG_FILE"):
        RunnerSettings(runner_backend="slurm_sudo", slurm_worker_python="/usr/bin/python3")
    (tmp_path / "slurm.json").write_text("{}")
    ssh = {
        "runner_backend": "slurm_ssh",
        "slurm_config_file": tmp_path / "slurm.json",
        "slurm_worker_python": "/usr/bin/python3",
    }
    with pytest.raises(ValueError, match="FRACTAL_SLURM_SSH_HOST"):
        RunnerSettings(**ssh)
    with pytest.raises(ValueError, match="FRACTAL_SLURM_SSH_WORKING_BASE_DIR must be an absolute"):
        RunnerSettings(
            **ssh,
            slurm_ssh_host="h",
            slurm_ssh_user="u",
            slurm_ssh_private_key_path="/k",
            slurm_ssh_working_base_dir="rel",
        )


@pytest.mark.parametrize(
    ("inactive", "named"),
    [([], None), (["pkg 1.0"], "pkg 1.0"), (["a 1", "b 2"], "a 1, b 2")],
)
def test_tasks_of_deactivated_packages_are_refused(inactive, named):
    if named is None:
        check_tasks_runnable(inactive)
        return
    with pytest.raises(FailedPrecondition) as err:
        check_tasks_runnable(inactive)
    assert named in err.value.message and err.value.reason == "TASK_PACKAGE_INACTIVE"
