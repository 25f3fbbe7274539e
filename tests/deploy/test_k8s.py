"""Every kustomize overlay renders, validates against the Kubernetes schemas (offline), and
agrees with the services: settings that exist, files that are mounted, keys that pair, and
probes, Services and NetworkPolicies at the ports the services really open."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from manifests import (
    DATABASE_URL,
    OVERLAYS,
    SETTINGS_OF_IMAGE,
    USES_DATABASE,
    Obj,
    Rendered,
    containers,
    file_mounts,
    host_of,
    image_name,
    matches,
    port_of,
    render,
)

from fractal_grpc.auth.tokens import (
    INTERNAL_AUDIENCE,
    RUNNER_AUDIENCE,
    USER_AUDIENCE,
    ServiceTokenSource,
    TokenSigner,
    TokenVerifier,
)
from fractal_grpc.settings import DEFAULT_METRICS_ADDRESSES, load_settings
from fractal_runner.slurm.config_file import parse_slurm_config
from fractal_runner.taskproc.local_config import get_local_config

# The oldest Kubernetes the manifests are for, and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# The commands of every service's console script (fractal_grpc.service_main).
COMMANDS = {"serve", "migrate"}


def setting_names(cls: type[Any]) -> set[str]:
    return {f"FRACTAL_{name.upper()}" for name in cls.model_fields}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Rendered]:
    name = request.param
    return name, Rendered(render(name, tmp_path_factory.mktemp(f"k8s-{name}")))


def test_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "production"]


def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: tuple[str, Rendered],
) -> None:
    name, rendered = overlay
    failures = []
    for version in KUBERNETES_VERSIONS:
        for obj in rendered.objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                failures.append(
                    f"{version} {obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}"
                )
    assert not failures, "\n".join(failures)
    namespaces = {obj["metadata"].get("namespace") for obj in rendered.objects}
    assert namespaces == {{"dev": "fractal-dev", "production": "fractal"}[name]}


def test_one_deployment_service_and_budget_per_service(overlay: tuple[str, Rendered]) -> None:
    _, rendered = overlay
    assert set(rendered.by_kind["Deployment"]) == {
        "fractal-api",
        "fractal-runner",
        "fractal-collector",
    }
    pods = rendered.pods()
    for name, deployment in rendered.by_kind["Deployment"].items():
        assert matches(deployment["spec"]["selector"], pods[name])
        budgets = [
            b
            for b in rendered.by_kind["PodDisruptionBudget"].values()
            if matches(b["spec"]["selector"], pods[name])
        ]
        assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets"
        services = [
            s
            for s in rendered.by_kind["Service"].values()
            if matches({"matchLabels": s["spec"]["selector"]}, pods[name])
        ]
        assert services, f"no Service selects {name}"


def test_production_runs_several_replicas(overlay: tuple[str, Rendered]) -> None:
    name, rendered = overlay
    replicas = {n: d["spec"]["replicas"] for n, d in rendered.by_kind["Deployment"].items()}
    if name == "production":
        assert replicas["fractal-runner"] >= 2 and replicas["fractal-api"] >= 2
        assert replicas["fractal-collector"] >= 2
    else:
        assert replicas == {"fractal-api": 1, "fractal-runner": 1, "fractal-collector": 1}


def test_containers_run_a_command_of_their_service_with_limits_and_no_root(
    overlay: tuple[str, Rendered],
) -> None:
    _, rendered = overlay
    for workload, template in rendered.workloads():
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in containers(template):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert image_name(container) in SETTINGS_OF_IMAGE, where
            assert container["args"][0] in COMMANDS and "command" not in container, where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_the_migration_job_migrates_both_services(overlay: tuple[str, Rendered]) -> None:
    _, rendered = overlay
    job = rendered.get("Job", "fractal-migrate")
    ran = {(image_name(c), tuple(c["args"])) for c in containers(job["spec"]["template"])}
    assert ran == {("fractal-api", ("migrate",)), ("fractal-runner", ("migrate",))}


def load_container_settings(
    rendered: Rendered,
    template: Obj,
    container: Obj,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """The container's settings, read by its service's own settings class from the rendered
    environment, every *_FILE setting pointing at the file its volumes really put there."""
    cls = SETTINGS_OF_IMAGE[image_name(container)]
    env = rendered.environment(container)
    # Other variables (HOME, TZ, ...) are not the services' business; a FRACTAL_* one that is no
    # setting would be ignored by the service (extra="ignore"), so it is refused here.
    unknown = {name for name in env if name.startswith("FRACTAL_")} - setting_names(cls)
    assert not unknown, f"{container['name']}: not settings of {cls.__name__}: {sorted(unknown)}"
    files = file_mounts(rendered, template, container)
    for name, value in env.items():
        if name.endswith("_FILE"):
            assert value in files, f"{name}={value}: no volume of {container['name']} has it"
            local = tmp_path / container["name"] / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(files[value])
            env[name] = str(local)
    for name in list(os.environ):
        if name.startswith("FRACTAL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(cls)


def deployment_settings(
    rendered: Rendered, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Obj]:
    template = rendered.get("Deployment", name)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return load_container_settings(rendered, template, container, tmp_path, monkeypatch), container


def test_every_setting_is_real_and_valid_and_every_file_mounted(
    overlay: tuple[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendered = overlay
    for _workload, template in rendered.workloads():
        for container in containers(template):
            with monkeypatch.context() as m:
                settings = load_container_settings(rendered, template, container, tmp_path, m)
            env = rendered.environment(container)
            if image_name(container) in USES_DATABASE:
                assert settings.database_url == DATABASE_URL.replace(
                    "postgresql://", "postgresql+asyncpg://"
                )
            else:  # no database credentials where they are not used
                assert "FRACTAL_DATABASE_URL" not in env, container["name"]


def test_an_unknown_setting_fails_the_check(
    overlay: tuple[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendered = overlay
    config = rendered.get("ConfigMap", _generated(rendered, "ConfigMap", "fractal-common"))
    config["data"]["FRACTAL_RUNER_MAX_JOBS"] = "4"  # misspelt: the services would ignore it
    try:
        with pytest.raises(AssertionError, match="FRACTAL_RUNER_MAX_JOBS"):
            for _w, template in rendered.workloads():
                for container in containers(template):
                    load_container_settings(rendered, template, container, tmp_path, monkeypatch)
    finally:
        del config["data"]["FRACTAL_RUNER_MAX_JOBS"]


def test_the_mounted_keys_pair_across_api_and_runner(
    overlay: tuple[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api verifies user tokens it signs, and the runner's service tokens; the runner verifies
    api's runner-audience tokens with api's public key and holds no private user-token key, api
    no service-token private key."""
    _, rendered = overlay
    with monkeypatch.context() as m:
        api, _ = deployment_settings(rendered, "fractal-api", tmp_path, m)
        api_keys = (
            api.jwt_private_key_pem(),
            api.jwt_public_key_pem(),
            api.service_public_key_pem(),
        )
    with monkeypatch.context() as m:
        runner, runner_container = deployment_settings(rendered, "fractal-runner", tmp_path, m)
        service_private = runner.service_private_key_pem()
        runner_api_key = runner.api_public_key_pem()
    jwt_private, jwt_public, service_public = api_keys
    token, _ = TokenSigner(
        jwt_private, issuer="fractal-api", audience=USER_AUDIENCE, lifetime=60
    ).sign("1")
    assert TokenVerifier(jwt_public, audience=USER_AUDIENCE).verify(token).subject == "1"
    service_token = ServiceTokenSource(service_private, service="runner").token()
    assert TokenVerifier(service_public, audience=INTERNAL_AUDIENCE).verify(service_token)
    assert runner_api_key is not None, "the runner needs api's public key (JobFolderService)"
    api_token = ServiceTokenSource(jwt_private, service="api", audience=RUNNER_AUDIENCE).token()
    assert TokenVerifier(runner_api_key, audience=RUNNER_AUDIENCE).verify(api_token)

    runner_template = rendered.get("Deployment", "fractal-runner")["spec"]["template"]
    runner_files = file_mounts(rendered, runner_template, runner_container).values()
    assert jwt_private not in runner_files
    api_template = rendered.get("Deployment", "fractal-api")["spec"]["template"]
    api_files = file_mounts(rendered, api_template, api_template["spec"]["containers"][0])
    assert service_private not in api_files.values()
    assert not any(path.startswith("/etc/fractal/ssh") for path in api_files)

    # The collector: its service tokens verify on api's internal listener; it holds no user-token
    # key and no api key at all, but the SSH identity of slurm_ssh sites, like the runner.
    with monkeypatch.context() as m:
        collector, collector_c = deployment_settings(rendered, "fractal-collector", tmp_path, m)
        collector_token = ServiceTokenSource(
            collector.service_private_key_pem(), service="collector"
        ).token()
    assert TokenVerifier(service_public, audience=INTERNAL_AUDIENCE).verify(collector_token)
    collector_template = rendered.get("Deployment", "fractal-collector")["spec"]["template"]
    collector_files = file_mounts(rendered, collector_template, collector_c)
    assert jwt_private not in collector_files.values()
    runner_ssh = {
        p: c
        for p, c in file_mounts(rendered, runner_template, runner_container).items()
        if p.startswith("/etc/fractal/ssh/")
    }
    assert (
        runner_ssh
        and {p: c for p, c in collector_files.items() if p.startswith("/etc/fractal/ssh/")}
        == runner_ssh
    )


def test_the_runner_files_are_read_by_the_runner(
    overlay: tuple[str, Rendered], tmp_path: Path
) -> None:
    """The SLURM config file and the local backend's config, parsed by the runner's own code."""
    _, rendered = overlay
    files = rendered.data("ConfigMap", _generated(rendered, "ConfigMap", "fractal-runner-files"))
    slurm = parse_slurm_config(json.loads(files["slurm_config.json"]))
    assert slurm.default_slurm_config.partition
    local = tmp_path / "local_config.json"
    local.write_text(files["local_config.json"])
    assert get_local_config(None, local).parallel_tasks_per_job == 4


def _generated(rendered: Rendered, kind: str, prefix: str) -> str:
    """The name kustomize gave a generated object (`prefix-<hash>`)."""
    (name,) = [n for n in rendered.by_kind[kind] if n.rsplit("-", 1)[0] == prefix]
    return name


def _target_port(service: Obj, port: Obj, container: Obj) -> int:
    target = port["targetPort"]
    if isinstance(target, int):
        return target
    (named,) = [p for p in container["ports"] if p["name"] == target]
    return int(named["containerPort"])


def _probe_ports(container: Obj) -> set[int]:
    probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all("grpc" in probe for probe in probes), "every probe is a grpc.health.v1 probe"
    return {probe["grpc"]["port"] for probe in probes}


def _service_targets(rendered: Rendered, name: str, container: Obj) -> set[int]:
    service = rendered.get("Service", name)
    return {_target_port(service, p, container) for p in service["spec"]["ports"]}


def test_probes_and_services_use_the_ports_the_services_open(
    overlay: tuple[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendered = overlay
    with monkeypatch.context() as m:
        api, api_c = deployment_settings(rendered, "fractal-api", tmp_path, m)
        api_env = rendered.environment(api_c)
    with monkeypatch.context() as m:
        runner, runner_c = deployment_settings(rendered, "fractal-runner", tmp_path, m)
    public = port_of(api.api_address)
    internal = port_of(api_env["FRACTAL_API_INTERNAL_ADDRESS"])
    health = port_of(runner.runner_address)
    for address in (
        api.api_address,
        api_env["FRACTAL_API_INTERNAL_ADDRESS"],
        runner.runner_address,
    ):
        assert host_of(address) == "0.0.0.0", f"{address}: a pod listens on every interface"

    api_metrics = port_of(api.api_metrics_address)
    runner_metrics = port_of(runner.runner_metrics_address)
    assert api_metrics == port_of(DEFAULT_METRICS_ADDRESSES["api"])
    assert runner_metrics == port_of(DEFAULT_METRICS_ADDRESSES["runner"])
    for address in (api.api_metrics_address, runner.runner_metrics_address):
        assert host_of(address) == "0.0.0.0", f"{address}: metrics are scraped from other pods"

    assert {p["containerPort"] for p in api_c["ports"]} == {public, internal, api_metrics}
    assert _probe_ports(api_c) == {public}
    assert _service_targets(rendered, "fractal-api", api_c) == {public}
    assert _service_targets(rendered, "fractal-api-internal", api_c) == {internal}

    assert {p["containerPort"] for p in runner_c["ports"]} == {health, runner_metrics}
    assert _probe_ports(runner_c) == {health}
    assert _service_targets(rendered, "fractal-runner", runner_c) == {health}

    # Metrics: a port named "metrics", a Service of its own, and the scrape annotations.
    for name, container, port in (
        ("fractal-api", api_c, api_metrics),
        ("fractal-runner", runner_c, runner_metrics),
    ):
        (named,) = [p for p in container["ports"] if p["name"] == "metrics"]
        assert named["containerPort"] == port
        assert _service_targets(rendered, f"{name}-metrics", container) == {port}
        service = rendered.get("Service", f"{name}-metrics")
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
        annotations = rendered.get("Deployment", name)["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)

    # The collector: health on its listener, metrics beside it.
    with monkeypatch.context() as m:
        collector, collector_c = deployment_settings(rendered, "fractal-collector", tmp_path, m)
    collector_health = port_of(collector.collector_address)
    collector_metrics = port_of(collector.collector_metrics_address)
    assert host_of(collector.collector_address) == "0.0.0.0"
    assert host_of(collector.collector_metrics_address) == "0.0.0.0"
    assert collector_metrics == port_of(DEFAULT_METRICS_ADDRESSES["collector"])
    assert {p["containerPort"] for p in collector_c["ports"]} == {
        collector_health,
        collector_metrics,
    }
    assert _probe_ports(collector_c) == {collector_health}
    assert _service_targets(rendered, "fractal-collector", collector_c) == {collector_health}
    (named,) = [p for p in collector_c["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == collector_metrics
    assert _service_targets(rendered, "fractal-collector-metrics", collector_c) == {
        collector_metrics
    }
    template = rendered.get("Deployment", "fractal-collector")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(collector_metrics)
    # The collector reaches api's internal listener through the internal Service.
    service = rendered.get("Service", host_of(collector.api_url).split(".")[0])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == port_of(collector.api_url)]
    assert _target_port(service, port, api_c) == internal

    # api reaches the runner's listener through the runner's Service.
    service = rendered.get("Service", host_of(api.runner_url).split(".")[0])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == port_of(api.runner_url)]
    assert _target_port(service, port, runner_c) == health

    # The runner reaches api's internal listener through the internal Service.
    service = rendered.get("Service", host_of(runner.api_url).split(".")[0])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == port_of(runner.api_url)]
    assert _target_port(service, port, api_c) == internal


Flow = tuple[str, int, str]  # (peer: a workload name or "*", port, protocol)


#: The pods of a Prometheus, in whatever namespace it runs (the policies' scrape rule).
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}


def _peers(rule_peers: list[Obj] | None, pods: dict[str, dict[str, str]]) -> set[str]:
    if not rule_peers:
        return {"*"}
    out: set[str] = set()
    for peer in rule_peers:
        if "namespaceSelector" in peer:
            # Outside our namespace: only Prometheus, from any namespace, is modelled.
            assert peer["namespaceSelector"] == {}, peer
            assert matches(peer["podSelector"], PROMETHEUS), peer
            out.add("prometheus")
            continue
        assert set(peer) == {"podSelector"}, f"only pod selectors are modelled: {peer}"
        out |= {name for name, labels in pods.items() if matches(peer["podSelector"], labels)}
    return out


def allowed_flows(rendered: Rendered, workload: str, direction: str) -> set[Flow] | None:
    """What NetworkPolicies let into (``ingress``) or out of (``egress``) a workload's pods;
    None when no policy isolates that direction (everything allowed)."""
    pods = rendered.pods()
    kind = direction.capitalize()
    isolated = False
    flows: set[Flow] = set()
    for policy in rendered.by_kind.get("NetworkPolicy", {}).values():
        spec = policy["spec"]
        if not matches(spec["podSelector"], pods[workload]) or kind not in spec["policyTypes"]:
            continue
        isolated = True
        for rule in spec.get(direction, []):
            peers = _peers(rule.get("from" if direction == "ingress" else "to"), pods)
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without ports"
            for port in rule["ports"]:
                flows |= {(peer, port["port"], port.get("protocol", "TCP")) for peer in peers}
    return flows if isolated else None


def test_network_policies_allow_only_the_flows_of_the_design(
    overlay: tuple[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rendered = overlay
    with monkeypatch.context() as m:
        api, api_c = deployment_settings(rendered, "fractal-api", tmp_path, m)
        internal = port_of(rendered.environment(api_c)["FRACTAL_API_INTERNAL_ADDRESS"])
    with monkeypatch.context() as m:
        runner, _ = deployment_settings(rendered, "fractal-runner", tmp_path, m)
    with monkeypatch.context() as m:
        collector, _ = deployment_settings(rendered, "fractal-collector", tmp_path, m)
    public = port_of(api.api_address)
    runner_port = port_of(api.runner_url)
    database = port_of(api.database_url)
    nats = port_of(api.nats_url)
    dns = {("*", 53, "UDP"), ("*", 53, "TCP")}
    outside = dns | {("*", database, "TCP"), ("*", nats, "TCP")}

    expected_ingress: dict[str, set[Flow]] = {
        "fractal-api": {
            ("*", public, "TCP"),
            ("fractal-runner", internal, "TCP"),
            ("fractal-collector", internal, "TCP"),
            ("prometheus", port_of(api.api_metrics_address), "TCP"),
        },
        "fractal-runner": {
            ("fractal-api", runner_port, "TCP"),
            ("prometheus", port_of(runner.runner_metrics_address), "TCP"),
        },
        # Nothing calls the collector; Prometheus scrapes it.
        "fractal-collector": {
            ("prometheus", port_of(collector.collector_metrics_address), "TCP"),
        },
        "fractal-migrate": set(),
    }
    expected_egress: dict[str, set[Flow]] = {
        "fractal-api": outside | {("fractal-runner", runner_port, "TCP")},
        # The runner: api's internal listener, and SSH to a slurm_ssh login node.
        "fractal-runner": outside | {("fractal-api", internal, "TCP"), ("*", 22, "TCP")},
        # The collector: api's internal listener, NATS, the package index over HTTPS, and SSH
        # to a slurm_ssh login node (where it makes the environments); no database.
        "fractal-collector": dns
        | {
            ("fractal-api", port_of(collector.api_url), "TCP"),
            ("*", port_of(collector.nats_url), "TCP"),
            ("*", 443, "TCP"),
            ("*", 22, "TCP"),
        },
        "fractal-migrate": dns | {("*", database, "TCP")},
    }
    assert set(rendered.pods()) == set(expected_ingress)
    for workload in expected_ingress:
        assert allowed_flows(rendered, workload, "ingress") == expected_ingress[workload]
        assert allowed_flows(rendered, workload, "egress") == expected_egress[workload]
    for name, policy in rendered.by_kind["NetworkPolicy"].items():
        selected = [
            w
            for w, labels in rendered.pods().items()
            if matches(policy["spec"]["podSelector"], labels)
        ]
        assert selected, f"NetworkPolicy {name} selects no pod"


def test_validation_rejects_a_misspelt_field(overlay: tuple[str, Rendered]) -> None:
    _, rendered = overlay
    deployment = json.loads(json.dumps(rendered.get("Deployment", "fractal-api")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grcp"] = container["readinessProbe"].pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError, match="grcp"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
