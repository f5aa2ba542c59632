"""docker/vit-server.Dockerfile and `make image-vit-server`: the image KServe's ViT runtime (k8s/kserve) deploys,
checked without a Docker engine (tests/k8s/test_image_build.py builds and runs it where one is reachable)."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker/vit-server.Dockerfile"
KSERVE = REPO / "k8s/kserve/base"


def make_recipe(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def test_the_dockerfile_installs_only_the_vit_extra_and_runs_the_server_as_non_root():
    text = DOCKERFILE.read_text()
    assert not text.startswith("# syntax="), "a syntax line pulls the frontend from a registry"
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]  # builder + final, both swappable
    assert re.findall(r'pip install "\.\[([^\]]+)\]"', text) == ["vit"]
    assert "torch" not in re.search(r"^vit = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M).group(1)
    final = text.split("\nFROM ${BASE}\n", 1)[1]
    assert "pip install" not in final, "the final stage must not build"
    assert re.search(r"^USER 10001", final, re.M)
    assert "EXPOSE 8500 8501" in final
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", final, re.M)
    # Exec form: python is the container's first process and gets SIGTERM itself (no shell in between).
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"services\.vit\"\]$", final, re.M)
    assert "STOPSIGNAL SIGTERM" in final


def test_make_builds_the_image_and_tag_the_kserve_runtime_deploys():
    recipe = make_recipe("image-vit-server", "IMAGE_BASE=base:1")
    assert "-f docker/vit-server.Dockerfile" in recipe and "--build-arg BASE=base:1" in recipe
    built = re.search(r"-t (\S+) \.", recipe).group(1)
    kustomization = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    tag = next(i["newTag"] for i in kustomization["images"] if i["name"] == "modelserve/vit-server")
    assert built == f"modelserve/vit-server:{tag}"
    runtime = next(yaml.safe_load_all((KSERVE / "vit/vit.yaml").read_text()))
    assert runtime["spec"]["containers"][0]["image"] == "modelserve/vit-server"
    assert "-f docker/vit-server.Dockerfile" in make_recipe("images", "IMAGE_BASE=base:1")


def test_the_model_is_baked_in_where_the_runtime_settings_look_for_it():
    literals = next(
        g
        for g in yaml.safe_load((KSERVE / "kustomization.yaml").read_text())["configMapGenerator"]
        if g["name"] == "vit-config"
    )["literals"]
    settings = dict(literal.split("=", 1) for literal in literals)
    text = DOCKERFILE.read_text()
    assert f"COPY ${{SAVED_MODEL_DIR}}/ {settings['VIT_MODEL_BASE']}/{settings['VIT_MODEL_NAME']}/" in text
    assert f"VIT_MODEL_BASE={settings['VIT_MODEL_BASE']}" in text
    assert f"VIT_MODEL_NAME={settings['VIT_MODEL_NAME']}" in text


def test_the_server_starts_without_the_exporter_the_image_removes(tmp_path):
    """The image deletes services/vit/export.py and has no keras-hub: the server must build without them."""
    assert re.search(r"^RUN rm /app/services/vit/export\.py", DOCKERFILE.read_text(), re.M)
    script = (
        "import sys\n"
        "sys.modules['services.vit.export'] = None  # as if deleted: importing it raises ImportError\n"
        "sys.modules['keras_hub'] = None\n"
        "from services.vit.server import create_service\n"
        "from services.vit.settings import ViTSettings\n"
        f"service = create_service(ViTSettings(model_base={str(tmp_path)!r}))\n"
        "print(service.name, len(service.grpc), len(service.oip))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["vit", "2", "1"]
