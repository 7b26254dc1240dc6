"""The image and the Kubernetes manifests agree with the service and with each other."""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from entrypoints.cli import build_parser
from entrypoints.settings import Settings, load_settings
from testkit.certs import make_ca_certificate

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE = ROOT / "k8s" / "base"
OVERLAY = ROOT / "k8s" / "overlays" / "btcusdt-example"
# The same as testbed/deploy_check.sh.
HADOLINT_FLAGS = [
    "--no-color",
    "--failure-threshold",
    "style",
    "--strict-labels",
    *(
        arg
        for label in ("title", "description", "source", "licenses", "version")
        for arg in ("--require-label", f"org.opencontainers.image.{label}:text")
    ),
]
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


# The Dockerfile.


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def dockerfile_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, value))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    variables = {}
    for value in stage.values("ENV"):
        for pair in value.split():
            key, _, assigned = pair.partition("=")
            variables[key] = assigned
    return variables


def final_stage() -> Stage:
    return dockerfile_stages()[-1]


def image_uid() -> int:
    users = final_stage().values("USER")
    assert len(users) == 1, "the final stage sets its user once"
    return int(users[0].split(":")[0])


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), *HADOLINT_FLAGS, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_fixed_non_root_user() -> None:
    (user,) = final_stage().values("USER")
    assert re.fullmatch(r"[0-9]+(:[0-9]+)?", user), "numeric, so runAsNonRoot can check it"
    assert all(int(part) > 0 for part in user.split(":"))


def test_base_images_are_pinned_by_tag_and_shared_by_both_stages() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a final stage"
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.base in names:
            continue
        image = stage.base.split("@")[0]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{stage.base} has no tag"
        assert tag != "latest", f"{stage.base} must be pinned"
        assert re.fullmatch(r"3\.11\.[0-9]+-slim(-[a-z]+)?", tag), tag
    assert len({stage.base for stage in stages}) == 1, "the venv's interpreter is the final one"


def test_the_entrypoint_is_the_console_script_and_the_command_is_run() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    stage = final_stage()
    (entrypoint,) = stage.values("ENTRYPOINT")
    (command,) = stage.values("CMD")
    assert json.loads(entrypoint) == ["loader-ws-trades"]
    assert "loader-ws-trades" in scripts
    assert json.loads(command) == ["run"]
    assert build_parser().parse_args(json.loads(command)).command == "run"


def test_the_final_stage_copies_only_the_venv_and_never_writes() -> None:
    stage = final_stage()
    builder = dockerfile_stages()[0].name
    copies = stage.values("COPY")
    assert copies
    assert all(copy.startswith(f"--from={builder} /opt/venv") for copy in copies)
    assert not any("pip" in run for run in stage.values("RUN")), "nothing installed there"
    variables = env_of(stage)
    assert variables["PYTHONUNBUFFERED"] == "1"
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"


def test_dependencies_come_from_the_lock_file_then_the_project_without_them() -> None:
    runs = dockerfile_stages()[0].values("RUN")
    lock_install = [run for run in runs if "-r requirements/runtime.lock" in run]
    assert len(lock_install) == 1
    assert "--no-cache-dir" in lock_install[0]
    project = [
        run for run in runs if re.search(r"pip install --no-deps --no-cache-dir \.( |$)", run)
    ]
    assert len(project) == 1
    assert runs.index(lock_install[0]) < runs.index(project[0])


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = [
        source
        for stage in dockerfile_stages()
        for copy in stage.values("COPY")
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
    ]
    assert "requirements/runtime.lock" in sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY {source}: no such file"
        assert any(path == entry or path.startswith(f"{entry}/") for entry in allowed), (
            f"COPY {source}: excluded by .dockerignore"
        )


def test_the_exposed_port_is_the_metrics_port() -> None:
    assert final_stage().values("EXPOSE") == [str(Settings.model_fields["metrics_port"].default)]


def test_the_oci_labels_are_set() -> None:
    labels = " ".join(final_stage().values("LABEL"))
    for label in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{label}=" in labels


# The Kubernetes manifests.


def load_documents(directory: Path) -> dict[str, dict[str, Any]]:
    """The manifests a kustomization lists as resources, by kind."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents: dict[str, dict[str, Any]] = {}
    for entry in kustomization["resources"]:
        for document in yaml.safe_load_all((directory / entry).read_text()):
            assert document["kind"] not in documents, f"one {document['kind']} per base"
            documents[document["kind"]] = document
    return documents


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    return load_documents(BASE)


@pytest.fixture(scope="module")
def job(base: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return base["Job"]


@pytest.fixture(scope="module")
def pod(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return dict(only)


@pytest.fixture(scope="module")
def config(base: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(base["ConfigMap"]["data"])


def known_variables() -> set[str]:
    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif alias is not None:
            names.add(str(alias))
    return names


def test_the_job_runs_once_and_never_restarts_in_place(job: dict[str, Any]) -> None:
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimit"] == 4
    assert spec.get("completions", 1) == 1
    assert spec.get("parallelism", 1) == 1
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["ttlSecondsAfterFinished"] > 0


def test_exit_codes_drive_the_pod_failure_policy(
    job: dict[str, Any], container: dict[str, Any]
) -> None:
    rules = job["spec"]["podFailurePolicy"]["rules"]

    def on_exit(code: int) -> str:
        for rule in rules:
            codes = rule.get("onExitCodes")
            if codes and codes["operator"] == "In" and code in codes["values"]:
                assert codes["containerName"] == container["name"]
                return str(rule["action"])
        return "Count"  # what the Job controller does without a matching rule

    assert rules[0]["action"] == "FailJob", "a permanent failure fails the Job whatever else"
    assert on_exit(2) == "FailJob"
    assert on_exit(1) == "Count"
    disruption = [
        rule
        for rule in rules
        if any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions", []))
    ]
    assert [rule["action"] for rule in disruption] == ["Ignore"]


def test_the_password_comes_from_a_secret(
    container: dict[str, Any], config: dict[str, str]
) -> None:
    env = {item["name"]: item for item in container["env"]}
    password = env["KAFKA_PASSWORD_PRODUCER"]
    assert set(password["valueFrom"]) == {"secretKeyRef"}
    assert password["valueFrom"]["secretKeyRef"]["key"]
    assert not any("PASSWORD" in name for name in config)
    assert all("value" not in item for item in env.values()), "plain values go in the ConfigMap"


def test_the_config_map_is_loaded_whole(
    base: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == base["ConfigMap"]["metadata"]["name"]


def test_the_ca_is_mounted_read_only_where_ca_path_points(
    pod: dict[str, Any], container: dict[str, Any], config: dict[str, str]
) -> None:
    ca = PurePosixPath(config["CA_PATH"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"]
    assert [item["path"] for item in volume["secret"]["items"]] == [ca.name]


def test_the_pod_is_locked_down(pod: dict[str, Any], container: dict[str, Any]) -> None:
    uid = image_uid()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == uid
    assert security["runAsGroup"] == uid
    assert security["fsGroup"] == uid
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"]
    assert "add" not in own["capabilities"]


def test_probes_use_the_health_endpoints_on_the_metrics_port(
    container: dict[str, Any], config: dict[str, str]
) -> None:
    (port,) = container["ports"]
    assert port["name"] == "metrics"
    assert port["containerPort"] == int(config["METRICS_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_prometheus_scrapes_the_metrics_port(job: dict[str, Any], config: dict[str, str]) -> None:
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == config["METRICS_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_outlasts_the_drain(pod: dict[str, Any], config: dict[str, str]) -> None:
    drain = float(config["DRAIN_TIMEOUT_SEC"])
    assert drain == Settings.model_fields["drain_timeout_sec"].default
    assert pod["terminationGracePeriodSeconds"] > drain


def test_resources_are_bounded(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_every_config_map_variable_is_one_the_service_knows(config: dict[str, str]) -> None:
    unknown = set(config) - known_variables()
    assert not unknown, f"the service does not read {sorted(unknown)}"


def overlay_config(config: dict[str, str]) -> dict[str, str]:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    merged = dict(config)
    merged.update(literal.split("=", 1) for literal in generator["literals"])
    return merged


@pytest.mark.parametrize("where", ["base", "overlay"])
def test_the_configuration_is_valid_for_the_service(
    where: str, config: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variables = config if where == "base" else overlay_config(config)
    ca = make_ca_certificate(tmp_path)
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CA_PATH", str(ca))
    monkeypatch.setenv("KAFKA_PASSWORD_PRODUCER", "from-the-secret")
    settings = load_settings()
    assert settings.security_protocol == "SASL_SSL"
    assert settings.metrics_port == int(variables["METRICS_PORT"])


def test_the_example_overlay_sets_one_run(
    base: dict[str, dict[str, Any]], config: dict[str, str]
) -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"]
    assert kustomization["nameSuffix"]
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == base["ConfigMap"]["metadata"]["name"]
    assert generator["behavior"] == "merge"
    merged = overlay_config(config)
    assert set(merged) <= known_variables()
    assert merged["SYMBOL"] == "BTCUSDT"
    for per_run in ("QUEUE_ID", "KAFKA_TOPIC", "TELEMETRY_PRODUCER_ID"):
        assert merged[per_run] != config[per_run], f"the overlay sets {per_run}"
    (image,) = kustomization["images"]
    assert (
        image["name"]
        == base["Job"]["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]
    )
    assert image.get("digest") or image["newTag"] not in ("", "latest")
    (labels,) = kustomization["labels"]
    assert labels["pairs"]["app.kubernetes.io/version"] == image["newTag"]
    for patch in kustomization["patches"]:
        patched = yaml.safe_load((OVERLAY / patch["path"]).read_text())
        assert (patched["kind"], patched["metadata"]["name"]) == (
            "Job",
            base["Job"]["metadata"]["name"],
        )


def test_the_network_policy_selects_the_loaders_pods(
    base: dict[str, dict[str, Any]], job: dict[str, Any]
) -> None:
    policy = base["NetworkPolicy"]["spec"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]


def test_ingress_reaches_only_the_metrics_port(
    base: dict[str, dict[str, Any]], config: dict[str, str]
) -> None:
    (rule,) = base["NetworkPolicy"]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": int(config["METRICS_PORT"])}]


def _egress_to(policy: dict[str, Any], namespace: str) -> set[tuple[str, int]]:
    ports: set[tuple[str, int]] = set()
    for rule in policy["egress"]:
        namespaces = {
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
            for peer in rule.get("to", [])
        }
        if namespace in namespaces:
            ports.update((port["protocol"], port["port"]) for port in rule["ports"])
    return ports


def test_egress_allows_dns_kafka_and_the_exchange_only(
    base: dict[str, dict[str, Any]], config: dict[str, str]
) -> None:
    policy = base["NetworkPolicy"]["spec"]
    assert _egress_to(policy, "kube-system") == {("UDP", 53), ("TCP", 53)}
    bootstrap_ports = {
        int(address.rsplit(":", 1)[1]) for address in config["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    }
    assert (
        _egress_to(policy, "kafka")
        == {("TCP", port) for port in bootstrap_ports}
        == {("TCP", 9093)}
    )
    public = [
        rule for rule in policy["egress"] if any("ipBlock" in peer for peer in rule.get("to", []))
    ]
    (rule,) = public
    assert {(port["protocol"], port["port"]) for port in rule["ports"]} == {
        ("TCP", 443),
        ("TCP", 9443),
    }
    (ipv4,) = [peer["ipBlock"] for peer in rule["to"] if peer["ipBlock"]["cidr"] == "0.0.0.0/0"]
    excluded = [ipaddress.IPv4Network(cidr) for cidr in ipv4["except"]]
    for private in PRIVATE_NETWORKS:
        assert any(ipaddress.IPv4Network(private).subnet_of(net) for net in excluded), private
    namespaced = [rule for rule in policy["egress"] if rule not in public]
    assert len(namespaced) == 2, "DNS and Kafka; nothing else inside the cluster"


DEV_ONLY_MODULES = {
    "pytest",
    "hypothesis",
    "testkit",
    "devtools",
    "jsonschema",
    "yaml",
    "grafanalib",
}


def test_the_image_ships_runtime_code_only() -> None:
    sources = {
        source.rstrip("/")
        for stage in dockerfile_stages()
        for copy in stage.values("COPY")
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
    }
    assert sources == {"requirements/runtime.lock", "pyproject.toml", "README.md", "src"}
    for path in (ROOT / "src").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in DEV_ONLY_MODULES, f"{path} imports {name}"
