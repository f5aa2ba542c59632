"""Every kustomization renders, and renders what the platform needs."""

import pytest
from k8s_support import ALL_SERVICES, REPO, TORCH_SERVICES, kustomizations, rel, render

from tools.deploy import manifests


@pytest.mark.parametrize("path", kustomizations(), ids=rel)
def test_renders(path):
    objects = render(path)
    assert objects, f"{rel(path)} rendered nothing"
    keys = [manifests.key(o) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate objects"


def test_every_kustomization_is_covered():
    # The bases, the overlays and the root: nothing silently left out of validation.
    names = {rel(p) for p in kustomizations()}
    for svc in ALL_SERVICES:
        assert f"k8s/base/{svc}" in names
    assert {".", "k8s/overlays/gpu", "k8s/overlays/cpu", "k8s/overlays/gpu-queue"} <= names


def test_root_deploys_all_five_into_one_namespace_with_pinned_images():
    objects = render(REPO)
    deployments = {o["metadata"]["name"] for o in manifests.of_kind(objects, "Deployment")}
    assert deployments == set(ALL_SERVICES)
    namespaces = manifests.of_kind(objects, "Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == ["modelserve"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "modelserve", manifests.key(obj)
    for dep in manifests.of_kind(objects, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name.startswith("modelserve/") and tag, (
                f"{dep['metadata']['name']}: image {c['image']} has no tag"
            )


def test_queue_component_swaps_torch_hpas_to_queue_depth_and_ships_adapter_rules():
    import yaml

    objects = render(REPO / "k8s/overlays/gpu-queue")
    hpas = {h["metadata"]["name"]: h for h in manifests.of_kind(objects, "HorizontalPodAutoscaler")}
    for svc in TORCH_SERVICES:
        metrics = hpas[svc]["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Pods"]
        assert metrics[0]["pods"]["metric"]["name"] == "serving_queue_depth"
    assert hpas["vit"]["spec"]["metrics"][0]["type"] == "Resource"  # TF Serving has no such gauge
    (rules_cm,) = [
        c
        for c in manifests.of_kind(objects, "ConfigMap")
        if c["metadata"]["name"] == "prometheus-adapter-rules"
    ]
    rules = yaml.safe_load(rules_cm["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if "serving_queue_depth" in r["seriesQuery"]]
    assert rule["name"]["as"] == "serving_queue_depth"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod metric, as type Pods needs


def test_apply_order_puts_dependencies_first():
    ordered = manifests.apply_order(render(REPO))
    kinds = [o["kind"] for o in ordered]
    assert kinds[0] == "Namespace"
    first = {k: kinds.index(k) for k in set(kinds)}
    assert first["ConfigMap"] < first["Deployment"]
    assert first["PersistentVolumeClaim"] < first["Deployment"]
    assert max(i for i, k in enumerate(kinds) if k == "Deployment") < first["HorizontalPodAutoscaler"]
    assert manifests.delete_order(ordered)[-1]["kind"] == "Namespace"


def test_unknown_kinds_apply_last_and_order_is_stable():
    objs = [
        {"kind": "Widget", "metadata": {"name": "w"}},
        {"kind": "Deployment", "metadata": {"name": "b"}},
        {"kind": "Namespace", "metadata": {"name": "n"}},
        {"kind": "Deployment", "metadata": {"name": "a"}},
    ]
    assert [manifests.key(o) for o in manifests.apply_order(objs)] == [
        "Namespace/n",
        "Deployment/b",
        "Deployment/a",
        "Widget/w",
    ]


def test_render_error_names_the_kustomization(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(manifests.RenderError, match=str(tmp_path)):
        manifests.render(tmp_path)
