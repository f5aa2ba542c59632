"""Manifest invariants over every rendered kustomization, plus the overlays' GPU/CPU contract."""

import re
import subprocess

import pytest
from k8s_support import ALL_SERVICES, REPO, TORCH_SERVICES, kustomizations, rel, render

from tools.deploy import manifests

STARTUP_BUDGET_S = 15 * 60  # a multi-GB checkpoint from a network volume


def pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def containers(dep: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(dep)
    return (spec.get("initContainers", []) if init else []) + spec["containers"]


def config_env(objects, dep: dict, container: dict) -> dict[str, str]:
    """The container's environment as the pod sees it: envFrom ConfigMaps, then env."""
    maps = {c["metadata"]["name"]: c.get("data", {}) for c in manifests.of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        assert name in maps, f"{dep['metadata']['name']}: envFrom ConfigMap {name} not rendered"
        env.update(maps[name])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def probe_port(container: dict, probe: dict) -> int:
    handler = next(probe[k] for k in ("httpGet", "grpc", "tcpSocket") if k in probe)
    port = handler["port"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    return ports[port] if isinstance(port, str) else port


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


RENDERS = kustomizations()


@pytest.mark.parametrize("path", RENDERS, ids=rel)
def test_deployments(path):
    objects = render(path)
    pvcs = {p["metadata"]["name"] for p in manifests.of_kind(objects, "PersistentVolumeClaim")}
    for dep in manifests.of_kind(objects, "Deployment"):
        name = dep["metadata"]["name"]
        spec = pod_spec(dep)
        assert "replicas" not in dep["spec"], f"{name}: replicas belongs to the HPA"

        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name

        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(dep):
            where = f"{name}/{c['name']}"
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: {kind} cpu+memory"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("privileged") is not True, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], (
                f"{where}: writable /tmp emptyDir"
            )
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: mounts undefined volume {m['name']}"

        for c in containers(dep, init=False):
            where = f"{name}/{c['name']}"
            startup, ready, live = (c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe"))
            assert startup and ready and live, f"{where}: needs startup, readiness and liveness probes"
            open_ports = {p["containerPort"] for p in c["ports"]}
            for probe in (startup, ready, live):
                assert probe_port(c, probe) in open_ports, (
                    f"{where}: probe on a port the container does not open"
                )
            budget = startup["failureThreshold"] * startup["periodSeconds"]
            assert budget >= STARTUP_BUDGET_S, f"{where}: startup budget {budget} s"
            # Otherwise a slow first model load is reported as a failed rollout (and rolled back).
            assert dep["spec"]["progressDeadlineSeconds"] > budget, name

            env = config_env(objects, dep, c)
            if name in TORCH_SERVICES:
                prefix = name.upper() + "_"
                assert ready["httpGet"]["path"] == "/readyz", where
                assert live["httpGet"]["path"] == "/healthz", where
                assert env["HF_HUB_OFFLINE"] == "1", f"{where}: the server must never download"
                assert env[f"{prefix}REST_PORT"] == "8000" and env[f"{prefix}GRPC_PORT"] == "50051", where
                assert open_ports == {8000, 50051}, where
            # preStop + drain + close vs terminationGracePeriodSeconds: test_k8s_overlays.py.

        if name in TORCH_SERVICES:
            (init,) = spec["initContainers"]
            assert init["command"][:2] == ["python", "/app/fetch_models.py"], name
            env = config_env(objects, dep, init)
            assert env["HF_HUB_OFFLINE"] == "0", f"{name}: the init container is the one that downloads"
            for var in (a for a in init["command"][2:] if not a.startswith("--")):
                assert var in env, f"{name}: fetch_models reads {var}, which the pod does not set"
            claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
            assert claim in pvcs, f"{name}: PVC {claim} not rendered"
            if name == "tts":  # the service refuses to start without named voices
                assert init["command"][-2:] == ["--voices", "TTS_VOICES_DIR"]
                assert env["TTS_VOICES_DIR"].startswith("/models/")
            (server,) = spec["containers"]
            assert {m["mountPath"]: m.get("readOnly") for m in server["volumeMounts"]}["/models"] is True


@pytest.mark.parametrize("path", RENDERS, ids=rel)
def test_services_hpas_pdbs_policies_point_at_real_pods(path):
    objects = render(path)
    deps = {d["metadata"]["name"]: d for d in manifests.of_kind(objects, "Deployment")}
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in deps.values()]

    for svc in manifests.of_kind(objects, "Service"):
        name = svc["metadata"]["name"]
        selected = [
            d
            for d in deps.values()
            if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert selected, f"Service {name} selects no pods"
        assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "grpc"}, name
        for port in svc["spec"]["ports"]:
            for dep in selected:
                ports = [p for c in containers(dep, init=False) for p in c.get("ports", [])]
                target = port["targetPort"]
                assert any(
                    p["name"] == target if isinstance(target, str) else p["containerPort"] == target
                    for p in ports
                ), (
                    f"Service {name} port {port['name']} targets {target}, not opened by {dep['metadata']['name']}"
                )

    for hpa in manifests.of_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deps, f"HPA {hpa['metadata']['name']} -> {ref}"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in manifests.of_kind(objects, kind):
            selector = (obj["spec"].get("selector") or obj["spec"]["podSelector"])["matchLabels"]
            assert any(selects(selector, t) for t in templates), (
                f"{kind} {obj['metadata']['name']} selects no pods"
            )

    for dep in deps.values():
        assert any(
            h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
            for h in manifests.of_kind(objects, "HorizontalPodAutoscaler")
        ), f"{dep['metadata']['name']}: no HPA"


def gpu_requests(dep: dict) -> tuple:
    c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "server")
    return (
        c["resources"].get("requests", {}).get("nvidia.com/gpu"),
        c["resources"].get("limits", {}).get("nvidia.com/gpu"),
    )


@pytest.mark.parametrize("overlay", ["k8s/overlays/gpu", "k8s/overlays/gpu-queue", "."])
def test_gpu_overlay_puts_every_torch_service_on_a_gpu_in_fp16(overlay):
    objects = render(REPO / overlay)
    deps = {d["metadata"]["name"]: d for d in manifests.of_kind(objects, "Deployment")}
    assert set(deps) == set(ALL_SERVICES)
    for svc in TORCH_SERVICES:
        dep = deps[svc]
        assert gpu_requests(dep) == (1, 1), svc
        spec = pod_spec(dep)
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), svc
        assert spec["nodeSelector"], svc
        env = config_env(objects, dep, spec["containers"][0])
        assert env[f"{svc.upper()}_DTYPE"] == "float16" and env[f"{svc.upper()}_DEVICE"] == "cuda", svc
    # ViT runs on a GPU too (components/vit-on-gpu; overlays/gpu-vit-on-cpu keeps it on CPU nodes).
    assert gpu_requests(deps["vit"]) == (1, 1)


def test_cpu_overlay_requests_no_gpu_anywhere():
    objects = render(REPO / "k8s/overlays/cpu")
    text = repr(objects)
    assert "nvidia.com/gpu" not in text
    deps = {d["metadata"]["name"]: d for d in manifests.of_kind(objects, "Deployment")}
    assert set(deps) == set(ALL_SERVICES)
    for svc in TORCH_SERVICES:
        env = config_env(objects, deps[svc], pod_spec(deps[svc])["containers"][0])
        assert env[f"{svc.upper()}_DEVICE"] == "cpu" and env[f"{svc.upper()}_DTYPE"] == "float32", svc
    for pvc in manifests.of_kind(objects, "PersistentVolumeClaim"):
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


# -- Dockerfiles: what the manifests rely on ---------------------------------------------------


def dockerfile(name: str) -> str:
    return (REPO / "docker" / f"{name}.Dockerfile").read_text()


def test_torch_dockerfile_contract():
    text = dockerfile("torch")
    assert not text.startswith("# syntax="), "a syntax line pulls the frontend from a registry"
    assert re.search(r"^ARG BASE=nvidia/cuda:\S+-runtime-", text, re.M), "CUDA runtime base by default"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["${BASE}", "${BASE}"], froms  # builder + final, both swappable
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCH=cuda" in text
    extras = re.findall(r'pip install "\.\[([^\]]+)\]"', text)
    assert extras == ["${SERVICE}"], f"installs only the SERVICE's extra: {extras}"
    assert 'test -f "${SERVICE}/__main__.py"' in text, "a build without the service's entry point must fail"
    assert "COPY protos/ /app/protos/" in text, "services import the gRPC contract from protos/"
    final = text.split("\nFROM ${BASE}\n", 1)[1]
    assert re.search(r"^USER 10001", final, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", final, re.M)
    assert "EXPOSE 8000 50051" in final
    assert "MODELSERVE_SERVICE=${SERVICE}" in final
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", final, re.M).group(1)
    assert 'exec python -m \\"services.$MODELSERVE_SERVICE\\"' in entrypoint, (
        "python must replace the shell (SIGTERM)"
    )
    assert "ARG MODELS_DIR" in final and "HF_HUB_OFFLINE=1" in final
    for forbidden in ("apt-get install -y --no-install-recommends python3 python3-venv", "pip install"):
        assert forbidden not in final, f"final stage must not build: {forbidden}"
    # Nothing from one machine's layout: torch comes from an index or a directory the build is given.
    assert "/opt/" not in text.replace("/opt/venv", "")


@pytest.mark.parametrize("svc", TORCH_SERVICES)
def test_every_torch_service_builds_from_the_one_dockerfile(svc):
    """`--build-arg SERVICE=<svc>` needs the pyproject extra and the entry point; `make images` builds it
    under the name the manifests deploy."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf"^{svc} = \[", pyproject, re.M), f"pyproject.toml has no [{svc}] extra"
    assert (REPO / "services" / svc / "__main__.py").exists()
    recipe = subprocess.run(
        ["make", "-n", f"image-{svc}", "TORCH_WHEELS=/wheels", "IMAGE_BASE=base:1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"docker/build-torch-image.sh {svc} modelserve/{svc}:" in recipe
    assert "TORCH_WHEELS=/wheels" in recipe and "BASE=base:1" in recipe
    dep = next(d for d in render(REPO / f"k8s/base/{svc}") if d["kind"] == "Deployment")
    assert {c["image"] for c in containers(dep)} == {f"modelserve/{svc}"}


def test_vit_dockerfile_contract():
    text = dockerfile("vit")
    assert re.search(r"^ARG BASE=tensorflow/serving:\S+", text, re.M)
    for flag in (
        "--enable_batching",
        "--batching_parameters_file=",
        "--enable_model_warmup",
        "--tensorflow_intra_op_parallelism=",
        "--tensorflow_inter_op_parallelism=",
        "--monitoring_config_file=",
    ):
        assert flag in text, flag
    assert "/monitoring/prometheus/metrics" in (REPO / "docker/vit/monitoring.config").read_text()
    assert "max_batch_size" in (REPO / "docker/vit/batching_parameters.txt").read_text()
    # The k8s Deployment repeats the flags (thread pools sized to its CPU limit): keep them in step.
    dep = next(d for d in render(REPO / "k8s/base/vit") if d["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    flags_in_cmd = re.findall(r'"(--[a-z_]+)', text.split("CMD", 1)[1])
    assert [a.split("=")[0] for a in args] == flags_in_cmd
