"""The rules of a collection over SSH (libs/fractal_grpc/collection/remote.py) and the
collector's slurm_ssh settings, table by table."""

from __future__ import annotations

import re
import shlex

import pytest

from fractal_grpc.collection import remote
from fractal_grpc.settings import CollectorSettings, SettingsError, load_settings

ROOT = "/shared/fractal/tasks"


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        (f"{ROOT}/.fractal/fractal-tasks-core1.0.2", True),
        (f"{ROOT}/x", True),
        (ROOT, False),  # the root itself is never removed
        (f"{ROOT}/", False),  # the same folder
        ("/shared/fractal/tasks-other/x", False),
        (f"{ROOT}/../tasks2/x", False),
        (f"{ROOT}/.fractal/../../x", False),
        ("relative/x", False),
        ("/", False),
    ],
)
def test_only_folders_inside_the_tasks_folder(path: str, inside: bool) -> None:
    assert remote.inside(ROOT, path) is inside


def test_a_relative_root_holds_nothing() -> None:
    assert not remote.inside("tasks", "tasks/x")


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/t/.fractal/pkg1.0.2/venv", "[/]t/[.]fractal/pkg1[.]0[.]2/venv"),
        ("/t/pkg1.0+local/venv", "[/]t/pkg1[.]0[+]local/venv"),
        ("/t/a_b-c@d=e", "[/]t/a_b-c@d=e"),
        ("/t/a b", None),  # outside the grammar: nothing is killed
        ("/t/$(reboot)", None),
        ("/t/a*", None),
        ("relative", None),
        ("/t//x", None),
    ],
)
def test_pkill_patterns_match_the_path_literally(path: str, pattern: str | None) -> None:
    got = remote.ere_literal(path)
    assert got == pattern
    if got is not None:
        assert re.search(got, f"python -m venv {path} --copies")
        if "." in path:  # a "." matches only itself
            assert not re.search(got, path.replace(".", "x"))
        assert not re.search(got, f"sh -c pkill {got}")  # never the shell that runs pkill


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/python3", "-m", "venv", "/t/.fractal/p1.0/venv"],
        ["uv", "pip", "install", "--python", "/t/p/venv/bin/python", "p[a,b]==1.0"],
        ["pip", "install", "p @ file:///t/p/p-1.0-py3-none-any.whl"],
        ["x", "it's; rm -rf / #", "$(id)", "`id`", "a b"],
    ],
)
def test_a_remote_command_line_gives_back_the_argument_list(argv: list[str]) -> None:
    line = remote.command_line(argv)
    assert line.startswith("cd / && exec env -u VIRTUAL_ENV")
    assert line.endswith(" 2>&1")
    words = shlex.split(line.removeprefix("cd / && exec ").removesuffix(" 2>&1"))
    assert words == [*remote.REMOTE_ENV, *argv]


def test_sh_passes_values_as_arguments_not_script_text() -> None:
    line = remote.sh('test -e "$1"', "/t/$(id)")
    assert shlex.split(line) == ["sh", "-c", 'test -e "$1"', "sh", "/t/$(id)"]


SSH = {
    "FRACTAL_RUNNER_BACKEND": "slurm_ssh",
    "FRACTAL_SLURM_SSH_HOST": "login.example.org",
    "FRACTAL_SLURM_SSH_USER": "fractal",
    "FRACTAL_SLURM_SSH_PRIVATE_KEY_PATH": "/etc/fractal/ssh/id_ed25519",
    "FRACTAL_SLURM_SSH_TASKS_DIR": "/shared/tasks",
}


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"FRACTAL_SLURM_SSH_HOST": None}, "FRACTAL_SLURM_SSH_HOST"),
        ({"FRACTAL_SLURM_SSH_USER": None}, "FRACTAL_SLURM_SSH_USER"),
        ({"FRACTAL_SLURM_SSH_PRIVATE_KEY_PATH": None}, "FRACTAL_SLURM_SSH_PRIVATE_KEY_PATH"),
        ({"FRACTAL_SLURM_SSH_TASKS_DIR": None}, "FRACTAL_SLURM_SSH_TASKS_DIR"),
        ({"FRACTAL_SLURM_SSH_TASKS_DIR": "tasks"}, "FRACTAL_SLURM_SSH_TASKS_DIR"),
        ({"FRACTAL_SLURM_SSH_TASKS_DIR": "/a/../b"}, "FRACTAL_SLURM_SSH_TASKS_DIR"),
        ({"FRACTAL_COLLECTOR_SSH_UV": "uv; reboot"}, "FRACTAL_COLLECTOR_SSH_UV"),
        ({"FRACTAL_RUNNER_BACKEND": "ssh"}, "FRACTAL_RUNNER_BACKEND"),
    ],
)
def test_collector_ssh_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None], variable: str
) -> None:
    for name, value in {**SSH, **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings(CollectorSettings)
    assert variable in str(err.value)


def test_collector_over_ssh_follows_the_runner_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_settings(CollectorSettings).over_ssh
    for name, value in SSH.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(CollectorSettings)
    assert settings.over_ssh and str(settings.slurm_ssh_tasks_dir) == "/shared/tasks"
