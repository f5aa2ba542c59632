"""What every deployable overlay (k8s/overlays/* and the root) must render: pinned images, every
object in its namespace, a shutdown that fits the grace period, API keys wired, docs and reflection off."""

import os
import re

import pytest
from k8s_support import REPO, TORCH_SERVICES, rel, render

from services.kit.server import CLOSE_S
from tools.deploy import manifests

OVERLAYS = [
    REPO,
    *sorted(p for p in (REPO / "k8s/overlays").iterdir() if (p / "kustomization.yaml").exists()),
]
NAMESPACE = "modelserve"
CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
}
# After the drain the server closes gRPC and HTTP within this long (services/kit/server.py).
CLOSE_BUDGET_S = 5
API_KEYS_SECRET = "modelserve-api-keys"


def deployments(objects) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests.of_kind(objects, "Deployment")}


def all_containers(dep: dict) -> list[dict]:
    spec = dep["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def server(dep: dict) -> dict:
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    return container


def config_data(objects, dep: dict) -> dict[str, str]:
    """The server's settings: the data of the ConfigMaps it takes its environment from."""
    maps = {c["metadata"]["name"]: c.get("data", {}) for c in manifests.of_kind(objects, "ConfigMap")}
    data: dict[str, str] = {}
    for source in server(dep).get("envFrom", []):
        data.update(maps[source["configMapRef"]["name"]])
    return data


def image_tag(image: str) -> str:
    """The tag of `name[:tag][@digest]` ('' when untagged); a registry port is not a tag."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def release_tag() -> str:
    """IMAGE_TAG from mk/k8s.mk: the tag `make images` builds."""
    match = re.search(r"^IMAGE_TAG \?= (\S+)$", (REPO / "mk/k8s.mk").read_text(), re.M)
    assert match, "mk/k8s.mk sets no IMAGE_TAG"
    return match.group(1)


def test_every_overlay_is_covered():
    assert {rel(p) for p in OVERLAYS} >= {
        ".",
        "k8s/overlays/cpu",
        "k8s/overlays/gpu",
        "k8s/overlays/gpu-queue",
    }


def test_image_tag_parsing():
    assert image_tag("modelserve/asr") == ""
    assert image_tag("registry.local:5000/modelserve/asr") == ""
    assert image_tag("registry.local:5000/modelserve/asr:0.1.0") == "0.1.0"
    assert image_tag("modelserve/asr:latest@sha256:" + "0" * 64) == "latest"


@pytest.mark.parametrize("path", OVERLAYS, ids=rel)
def test_images_are_pinned_to_the_release_tag(path):
    tag = release_tag()
    for dep in deployments(render(path)).values():
        for c in all_containers(dep):
            where = f"{rel(path)}: {dep['metadata']['name']}/{c['name']} image {c['image']}"
            assert image_tag(c["image"]) not in ("", "latest"), f"{where}: untagged or latest"
            # What `make images` builds is what the overlay deploys.
            assert image_tag(c["image"]) == tag, f"{where}: not IMAGE_TAG {tag} (mk/k8s.mk)"


@pytest.mark.parametrize("path", OVERLAYS, ids=rel)
def test_every_namespaced_object_has_the_namespace(path):
    objects = render(path)
    assert [n["metadata"]["name"] for n in manifests.of_kind(objects, "Namespace")] == [NAMESPACE]
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            # Without one, `kubectl apply` puts it into whatever namespace the context points at.
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{rel(path)}: {manifests.key(obj)}"


def test_close_budget_covers_the_servers_close():
    # The server's close phase (plus a second for the model thread) must fit the budget assumed below.
    assert CLOSE_S + 1 <= CLOSE_BUDGET_S


def shutdown_seconds(objects, dep: dict) -> float:
    """Worst case from the pod's deletion to its exit: preStop, then the drain, then the close."""
    container = server(dep)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and len(pre_stop) == 2, pre_stop
    name = dep["metadata"]["name"]
    if name in TORCH_SERVICES:
        setting = f"{name.upper()}_SHUTDOWN_GRACE_S"
        data = config_data(objects, dep)
        assert setting in data, f"{name}: {setting} not set (the default may change under the manifest)"
        drain = float(data[setting])
    else:
        # TF Serving has no drain flag; should one be passed, count it.
        drains = [a for a in container.get("args", []) if re.match(r"--\w*(grace|drain)\w*=", a)]
        drain = sum(float(a.split("=", 1)[1]) for a in drains)
    return float(pre_stop[1]) + drain + CLOSE_BUDGET_S


@pytest.mark.parametrize("path", OVERLAYS, ids=rel)
def test_shutdown_fits_in_the_termination_grace_period(path):
    objects = render(path)
    deps = deployments(objects)
    assert set(deps) >= set(TORCH_SERVICES) | {"vit"}
    for name, dep in deps.items():
        needed = shutdown_seconds(objects, dep)
        grace_period = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # At grace_period the kubelet sends SIGKILL: in-flight requests would be cut off.
        assert needed < grace_period, f"{rel(path)}: {name} needs {needed} s, gets {grace_period} s"


def test_shutdown_check_counts_the_drain(tmp_path):
    # A longer drain in an overlay must break the budget: the check reads the rendered ConfigMap.
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(REPO / 'k8s/overlays/gpu', tmp_path)}]\n"
        "configMapGenerator:\n"
        "  - name: imagegen-config\n"
        "    behavior: merge\n"
        '    literals: ["IMAGEGEN_SHUTDOWN_GRACE_S=60"]\n'
    )
    objects = manifests.render(tmp_path)
    dep = deployments(objects)["imagegen"]
    assert shutdown_seconds(objects, dep) == 10 + 60 + CLOSE_BUDGET_S
    assert shutdown_seconds(objects, dep) >= dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("path", OVERLAYS, ids=rel)
def test_torch_servers_read_api_keys_from_an_optional_secret(path):
    deps = deployments(render(path))
    for name in TORCH_SERVICES:
        dep = deps[name]
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        container = server(dep)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        key_file = env.get("MODELSERVE_API_KEYS_FILE")
        assert key_file, f"{name}: MODELSERVE_API_KEYS_FILE not set"
        mounts = [
            m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        assert len(mounts) == 1, f"{name}: {key_file} is on no mounted volume"
        (mount,) = mounts
        assert mount.get("readOnly") is True, name
        secret = volumes[mount["name"]].get("secret")
        assert secret and secret["secretName"] == API_KEYS_SECRET, (
            f"{name}: {mount['name']} is not the Secret"
        )
        # A pod must start without the Secret (the rollout is not stuck); its server then refuses every request.
        assert secret.get("optional") is True, name
        relative = key_file[len(mount["mountPath"].rstrip("/")) + 1 :]
        assert {"key": "api-keys", "path": relative} in secret.get("items", []), (
            f"{name}: key api-keys is not projected to {key_file}"
        )
        for init in dep["spec"]["template"]["spec"].get("initContainers", []):
            assert mount["name"] not in {m["name"] for m in init.get("volumeMounts", [])}, (
                f"{name}/{init['name']}: the model fetcher has no business with the keys"
            )
    # No real key is committed: the Secret is created by hand (k8s/README.md).
    assert not [
        s for s in manifests.of_kind(render(path), "Secret") if s["metadata"]["name"] == API_KEYS_SECRET
    ]


@pytest.mark.parametrize("path", OVERLAYS, ids=rel)
def test_docs_and_grpc_reflection_are_off(path):
    objects = render(path)
    deps = deployments(objects)
    for name in TORCH_SERVICES:
        data = config_data(objects, deps[name])
        prefix = name.upper() + "_"
        assert data.get(f"{prefix}DOCS") == "false", f"{rel(path)}: {name} serves /docs"
        assert data.get(f"{prefix}GRPC_REFLECTION") == "false", f"{rel(path)}: {name} serves reflection"
