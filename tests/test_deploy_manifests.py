"""deploy/kubernetes: valid against the Kubernetes schemas (kubernetes-validate, strict, in a
cached venv), and consistent with the daemon: the drain fits in the termination grace period, the
probes ask health names the daemon answers, the autoscaler's metrics are the adapter's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from sodd.config.toml_file import read_config
from tests.fleet_helpers import cached_venv

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
VALIDATOR = ["kubernetes-validate==1.37.0"]
# The oldest Kubernetes the manifests are for: native gRPC probes are GA from 1.27; k3s and KubeEdge
# releases at the edge trail the newest by a few versions.
KUBERNETES = ("1.29.0", "1.37.0")
# CRDs with no schema in kubernetes-validate: checked by hand below.
CUSTOM = {"ServiceMonitor", "Kustomization"}


def documents() -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    validate = cached_venv("kubernetes-validate", VALIDATOR) / "kubernetes-validate"
    files = [str(p) for p in sorted(DEPLOY.glob("*.yaml"))]
    for version in KUBERNETES:
        result = subprocess.run([str(validate), "--strict", "-k", version, *files], capture_output=True, text=True,
                                timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        for line in output.splitlines():
            assert line.startswith("INFO") or any(f"kind {kind} " in line for kind in CUSTOM), line
    monitor, = by_kind("ServiceMonitor")
    service = next(s for s in by_kind("Service") if s["metadata"]["name"] == "sodd")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    kustomization, = by_kind("Kustomization")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml")
                                                          if p.name != "kustomization.yaml")


def test_manifests_agree_with_the_daemon(tmp_path: Path) -> None:
    config_map = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "sodd-config")
    toml_text = config_map["data"]["sodd.toml"]
    config_file = tmp_path / "sodd.toml"
    config_file.write_text(toml_text)
    values = read_config(config_file)  # the daemon's own reader: every key known, every value valid
    settings = tomllib.loads(toml_text)
    drain = settings["drain_grace_seconds"] + settings["drain_timeout_seconds"] + 2  # + drain's quiet limit
    assert values["max_connection_age_seconds"] > 0
    for workload in [*by_kind("Deployment"), *by_kind("DaemonSet")]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > drain, workload["metadata"]["name"]
        (container,) = pod["containers"]
        assert "preStop" not in container.get("lifecycle", {}), "a preStop sleep would delay the drain's start"
        assert container["readinessProbe"]["grpc"]["service"] == ""
        assert container["livenessProbe"]["grpc"]["service"] == "liveness"
        assert container["readinessProbe"]["grpc"]["port"] == 50051
    (daemonset,) = by_kind("DaemonSet")
    edge_pod = daemonset["spec"]["template"]["spec"]
    assert edge_pod["nodeSelector"] and edge_pod["tolerations"]
    (headless,) = [s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["ports"][0]["port"] == 50051
    assert by_kind("PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    rules = yaml.safe_load(next(c for c in by_kind("ConfigMap") if "rules.yaml" in c["data"])["data"]["rules.yaml"])
    served = {rule["name"]["as"] for rule in rules["rules"]}
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served
    # The adapter reads series the daemon exports.
    exported = {"sodd_queue_depth", "sodd_request_duration_seconds_bucket"}
    assert all(any(name in rule["seriesQuery"] for name in exported) for rule in rules["rules"])
