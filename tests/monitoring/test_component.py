"""k8s/components/monitoring rendered the way an operator enables it: a kustomization of their own
that takes an overlay and adds the component (k8s/README.md)."""

import json
import os

import pytest
from monitoring_support import (
    COMPONENT,
    DASHBOARD,
    PROMETHEUS_RULE,
    REPO,
    prometheus_rule,
    service_monitors,
    tf_serving_metrics_path,
)

from tools.deploy import manifests

OVERLAY = REPO / "k8s" / "overlays" / "gpu-queue"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("with-monitoring")
    (root / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: modelserve\n"
        f"resources:\n  - {os.path.relpath(OVERLAY, root)}\n"
        f"components:\n  - {os.path.relpath(COMPONENT, root)}\n"
    )
    return manifests.render(root)


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_component_adds_rules_monitors_and_dashboard_to_an_overlay(rendered):
    assert [o["metadata"]["name"] for o in of_kind(rendered, "PrometheusRule")] == ["modelserve"]
    assert sorted(o["metadata"]["name"] for o in of_kind(rendered, "ServiceMonitor")) == [
        "modelserve-torch",
        "modelserve-vit",
    ]
    for obj in of_kind(rendered, "PrometheusRule") + of_kind(rendered, "ServiceMonitor"):
        assert obj["metadata"]["namespace"] == "modelserve"
    rule = of_kind(rendered, "PrometheusRule")[0]
    assert rule["spec"] == prometheus_rule()["spec"], f"kustomize changed {PROMETHEUS_RULE}"


def test_dashboard_config_map_is_picked_up_by_the_grafana_sidecar(rendered):
    (config_map,) = [
        o for o in of_kind(rendered, "ConfigMap") if o["metadata"]["name"] == "modelserve-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    assert json.loads(content) == json.loads(DASHBOARD.read_text())
    assert len(content.encode()) < 1024 * 1024  # a ConfigMap's limit


def test_service_monitors_select_every_service_on_its_metrics_port_and_path(rendered):
    services = of_kind(rendered, "Service")
    deployments = {d["metadata"]["name"]: d for d in of_kind(rendered, "Deployment")}
    covered = set()
    for monitor in service_monitors().values():
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["endpoints"]
        for service in services:
            if wanted.items() <= service["metadata"]["labels"].items():
                name = service["metadata"]["name"]
                covered.add(name)
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, name
                annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
                # The same path the pods advertise for annotation-based scraping.
                assert endpoint["path"] == annotations["prometheus.io/path"], name
    assert covered == {"translation", "asr", "tts", "imagegen", "vit"}
    assert service_monitors()["tf-serving"]["spec"]["endpoints"][0]["path"] == tf_serving_metrics_path()


def test_network_policies_admit_prometheus_from_a_labelled_namespace(rendered):
    """The README tells operators to label the monitoring namespace modelserve.io/access=true."""
    for policy in of_kind(rendered, "NetworkPolicy"):
        sources = [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])]
        labels = [peer.get("namespaceSelector", {}).get("matchLabels", {}) for peer in sources]
        assert {"modelserve.io/access": "true"} in labels, policy["metadata"]["name"]
