"""ViT on GPUs in the gpu overlay (components/vit-on-gpu), and the switch that keeps it on CPU nodes
(components/vit-on-cpu, overlays/gpu-vit-on-cpu)."""

import re
import subprocess

import pytest
from k8s_support import REPO, TORCH_SERVICES, render

from tools.deploy import manifests

GPU_OVERLAYS = ["k8s/overlays/gpu", "k8s/overlays/gpu-queue", "."]
BATCHING_FLAG = "--batching_parameters_file="


def deployments(path: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests.of_kind(render(REPO / path), "Deployment")}


def server(dep: dict) -> dict:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "server")


def gpus(dep: dict) -> tuple:
    resources = server(dep)["resources"]
    return resources.get("requests", {}).get("nvidia.com/gpu"), resources.get("limits", {}).get("nvidia.com/gpu")


def batching_parameters(path: str, dep: dict) -> str:
    """The text of the batching file the server's flags name, from the ConfigMap mounted there."""
    (flag,) = [a for a in server(dep)["args"] if a.startswith(BATCHING_FLAG)]
    file_path = flag.removeprefix(BATCHING_FLAG)
    directory, name = file_path.rsplit("/", 1)
    (mount,) = [m for m in server(dep)["volumeMounts"] if m["mountPath"] == directory]
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    maps = {c["metadata"]["name"]: c for c in manifests.of_kind(render(REPO / path), "ConfigMap")}
    return maps[volume["configMap"]["name"]]["data"][name]


@pytest.mark.parametrize("path", GPU_OVERLAYS)
def test_gpu_overlays_run_vit_on_the_tf_serving_gpu_image_with_gpu_batching(path):
    vit = deployments(path)["vit"]
    spec = vit["spec"]["template"]["spec"]
    assert gpus(vit) == (1, 1)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    assert re.fullmatch(r"modelserve/vit-gpu:\S+", server(vit)["image"])
    args = server(vit)["args"]
    assert "--enable_batching" in args and "--enable_model_warmup" in args
    text = batching_parameters(path, vit)
    values = dict(re.findall(r"(\w+) \{ value: (\d+) \}", text))
    allowed = [int(n) for n in re.findall(r"allowed_batch_sizes: (\d+)", text)]
    # Bigger batches than the CPU file; padded to a few shapes, the largest being max_batch_size (TF Serving
    # refuses the file otherwise).
    cpu = dict(re.findall(r"(\w+) \{ value: (\d+) \}", (REPO / "docker/vit/batching_parameters.txt").read_text()))
    assert int(values["max_batch_size"]) > int(cpu["max_batch_size"])
    assert allowed == sorted(allowed) and allowed[-1] == int(values["max_batch_size"])
    # One batch thread per CPU of the pod's limit: they decode images while the GPU computes.
    assert int(values["num_batch_threads"]) == int(server(vit)["resources"]["limits"]["cpu"])


def test_make_builds_the_image_the_gpu_overlay_deploys_on_the_tf_serving_gpu_base():
    (image,) = {server(deployments(p)["vit"])["image"] for p in GPU_OVERLAYS}
    recipe = subprocess.run(["make", "-n", "image-vit-gpu"], cwd=REPO, capture_output=True, text=True, check=True)
    assert re.search(r"-f docker/vit\.Dockerfile --build-arg BASE=tensorflow/serving:[\d.]+-gpu", recipe.stdout)
    assert f"-t {image} " in recipe.stdout + " "


def test_vit_on_cpu_switch_restores_the_base_vit_and_keeps_torch_on_gpus():
    switched, gpu, cpu = (deployments(p) for p in ("k8s/overlays/gpu-vit-on-cpu", "k8s/overlays/gpu",
                                                       "k8s/overlays/cpu"))
    # Exactly the CPU deployment of ViT (base + release tag), nothing of the GPU variant left behind.
    assert switched["vit"] == cpu["vit"]
    assert gpus(switched["vit"]) == (None, None)
    for name in TORCH_SERVICES:
        assert switched[name] == gpu[name] and gpus(switched[name]) == (1, 1), name
    config_maps = [c["metadata"]["name"] for c in manifests.of_kind(render(REPO / "k8s/overlays/gpu-vit-on-cpu"),
                                                                     "ConfigMap")]
    assert not [name for name in config_maps if name.startswith("vit-gpu-batching")]
