"""The Dockerfiles of deploy/docker: nothing is built here (no daemon), so each one is linted with
hadolint and checked against the repository: files it copies exist, the make targets it runs
exist, the console script it starts is declared by a package it installs, and every image runs
as an unprivileged user."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from manifests import REPO, SETTINGS_OF_IMAGE, port_of, tool

DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMMANDS = {"serve", "migrate"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse(path: Path) -> list[Stage]:
    """Stages with their instructions (continuations joined, comment lines dropped)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def inherited(stages: list[Stage], stage: Stage, keyword: str) -> str | None:
    """The last value of ``keyword`` in ``stage`` or the stages it is built FROM."""
    by_name = {s.name: s for s in stages}
    current: Stage | None = stage
    while current is not None:
        values = current.args(keyword)
        if values:
            return values[-1]
        current = by_name.get(current.base)
    return None


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{value}: use the exec (JSON) form"
    return parsed


def images(stages: list[Stage]) -> list[Stage]:
    """The stages that are images (they start a program), not build steps."""
    return [s for s in stages if inherited(stages, s, "ENTRYPOINT") is not None]


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", text, flags=re.MULTILINE))


def pip_installed_paths(stage: Stage) -> list[str]:
    """Local paths passed to `pip install` in a stage's RUN instructions."""
    out = []
    for run in stage.args("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                out += [w for w in words[2:] if w.startswith("./")]
    return out


def apt_packages(stage: Stage) -> set[str]:
    out: set[str] = set()
    for run in stage.args("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                out |= {w for w in words[2:] if not w.startswith("-")}
    return out


def console_scripts(package: Path) -> set[str]:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    return set(project.get("scripts", {}))


def config_ports(env_file: str) -> set[int]:
    """Ports of the listen addresses in a base ConfigMap env file."""
    text = (REPO / "deploy" / "k8s" / "base" / "config" / env_file).read_text()
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    listen = (
        "FRACTAL_API_ADDRESS",
        "FRACTAL_API_INTERNAL_ADDRESS",
        "FRACTAL_API_METRICS_ADDRESS",
        "FRACTAL_RUNNER_ADDRESS",
        "FRACTAL_RUNNER_METRICS_ADDRESS",
        "FRACTAL_COLLECTOR_ADDRESS",
        "FRACTAL_COLLECTOR_METRICS_ADDRESS",
    )
    return {port_of(v) for k, v in pairs.items() if k in listen}


def test_there_is_one_dockerfile_per_service() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "api.Dockerfile",
        "collector.Dockerfile",
        "runner.Dockerfile",
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    out = subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install grpcio\n")
    out = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3006" in out.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_what_the_dockerfile_names_exists(path: Path) -> None:
    """Build context = the repository root; every COPY source, `make` target and package."""
    stages = parse(path)
    targets = make_targets()
    for stage in stages:
        for copy in stage.args("COPY"):
            words = copy.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{path.name}: COPY {source}: no such path"
        for run in stage.args("RUN"):
            for target in re.findall(r"\bmake\s+([A-Za-z0-9_.-]+)", run):
                assert target in targets, f"{path.name}: make {target}: no such target"
        for package in pip_installed_paths(stage):
            assert (REPO / package / "pyproject.toml").is_file(), f"{path.name}: {package}"
            copied = [c.split()[-2] for c in stage.args("COPY") if "--from" not in c]
            assert any(package.removeprefix("./") + "/" == src for src in copied), (
                f"{path.name}: pip installs {package} without copying it in"
            )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_starts_a_declared_console_script_as_non_root(path: Path) -> None:
    stages = parse(path)
    installed = [p for s in stages for p in pip_installed_paths(s)]
    declared = set().union(*(console_scripts(REPO / p) for p in installed))
    assert images(stages), f"{path.name}: no stage has an ENTRYPOINT"
    for stage in images(stages):
        entrypoint = exec_form(inherited(stages, stage, "ENTRYPOINT") or "")
        assert entrypoint[0] in declared, (
            f"{path.name} [{stage.name}]: {entrypoint[0]} is not a console script of {installed}"
        )
        cmd = exec_form(inherited(stages, stage, "CMD") or "[]")
        assert cmd and cmd[0] in COMMANDS, f"{path.name} [{stage.name}]: CMD {cmd}"
        user = inherited(stages, stage, "USER") or "root"
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{path.name} [{stage.name}]: runs as {user}"
        # The service's own pyproject declares the script the image is named after.
        assert entrypoint[0] == f"fractal-{path.name.removesuffix('.Dockerfile')}"


def test_images_match_the_manifests_and_open_the_configured_ports() -> None:
    """The images the manifests run are these Dockerfiles', exposing the configured ports."""
    entrypoints = {}
    for path in DOCKERFILES:
        stages = parse(path)
        (script,) = {exec_form(inherited(stages, s, "ENTRYPOINT") or "")[0] for s in images(stages)}
        entrypoints[script] = {int(p) for s in stages for e in s.args("EXPOSE") for p in e.split()}
    assert set(entrypoints) == set(SETTINGS_OF_IMAGE)
    assert entrypoints["fractal-api"] == config_ports("api.env")
    assert entrypoints["fractal-runner"] == config_ports("runner.env")
    assert entrypoints["fractal-collector"] == config_ports("collector.env")


def test_the_runner_comes_with_slurm_tools_or_with_ssh_only() -> None:
    stages = {s.name: s for s in parse(DOCKER / "runner.Dockerfile")}
    assert {"slurm-sudo", "slurm-ssh"} <= set(stages)
    assert apt_packages(stages["slurm-sudo"]) >= {"slurm-client", "munge", "sudo"}
    assert apt_packages(stages["slurm-ssh"]) == {"openssh-client"}
    assert not apt_packages(stages["runtime"])
    # `docker build` without --target builds the last stage: the SSH-only flavour.
    assert list(stages)[-1] == "slurm-ssh"
    api = parse(DOCKER / "api.Dockerfile")
    assert not any(apt_packages(s) for s in images(api))


def test_the_collector_comes_with_uv_and_ssh_only_for_slurm_ssh() -> None:
    stages = {s.name: s for s in parse(DOCKER / "collector.Dockerfile")}
    assert {"runtime", "slurm-ssh", "local"} <= set(stages)
    assert apt_packages(stages["slurm-ssh"]) == {"openssh-client"}
    assert not apt_packages(stages["runtime"]) and not apt_packages(stages["local"])
    # `docker build` without --target builds the last stage: no SSH client.
    assert list(stages)[-1] == "local"
    # uv, the default installer, comes with the collector's package (the lock pins it), so the
    # venv the image copies has it beside its Python, where the collector looks first.
    assert "./services/collector" in pip_installed_paths(stages["build"])
    collector = tomllib.loads((REPO / "services/collector/pyproject.toml").read_text())
    assert any(
        dep.split(">")[0].split("=")[0] == "uv" for dep in collector["project"]["dependencies"]
    )
    assert "/opt/fractal/bin" in (inherited(list(stages.values()), stages["local"], "ENV") or "")
