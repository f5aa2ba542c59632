"""A new service is its folder and its proto: the platform, clients, manifests and Locust find the sixth."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from clients import Client, GrpcClient
from services.kit.testing import ServerThread
from services.platform import available_services, create_services
from services.registry import entries
from tools.deploy import service_lists

SIXTH = Path(__file__).resolve().parent / "sixth"
REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"translation", "asr", "tts", "imagegen", "vit"}


def test_the_shipped_services_declare_themselves():
    registry = entries()
    assert set(registry) == SHIPPED
    assert [name for name, entry in registry.items() if not entry.torch] == ["vit"]
    # mk/k8s.mk builds one torch image per service the registry marks torch.
    torch = subprocess.run(
        ["python3", "-m", "services.registry", "--torch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert torch.stdout.split() == ["asr", "imagegen", "translation", "tts"]
    # The clients carry one client per service (images: the imagegen service's OpenAI-style name).
    with Client("http://127.0.0.1:9") as client:
        assert {"translation", "asr", "tts", "images", "vit"} <= vars(client).keys()


def test_the_platform_serves_the_sixth_and_the_clients_reach_it(sixth_paths):
    assert "reverse" in available_services()
    services = create_services(["reverse"])
    with ServerThread(lambda: services, services[0].settings) as server:
        with Client(server.rest_url) as client:
            assert client.reverse.reverse("hello") == "olleh"
        with GrpcClient(server.grpc_target) as client:
            assert client.reverse.reverse("stressed") == "desserts"
        oip = httpx.post(
            f"{server.rest_url}/v2/models/reverse/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["abc"]}]},
        )
        assert oip.status_code == 200, oip.text
        assert oip.json()["outputs"][0]["data"] == ["cba"]
        # Validation is the kit's, as for every service.
        refused = httpx.post(f"{server.rest_url}/v1/reverse", json={"text": ""})
        assert refused.status_code == 400, refused.text


def render(path) -> list[dict]:
    text = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def names(objects: list[dict], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def tree_with_the_sixths_manifests(root: Path) -> Path:
    """A copy of the repository's manifests with the sixth's own folders where a shipped service keeps them."""
    shutil.copytree(REPO / "k8s", root / "k8s")
    (root / "mk").mkdir()
    shutil.copy(REPO / "mk/k8s.mk", root / "mk")
    shutil.copy(REPO / "kustomization.yaml", root)
    for folder in ("k8s/base/reverse", "k8s/kserve/base/reverse"):
        shutil.copytree(SIXTH / folder, root / folder)
    return root


def test_make_manifests_takes_the_sixth_through_the_shared_components(sixth_paths, tmp_path):
    root = tree_with_the_sixths_manifests(tmp_path)
    assert service_lists.main(["--check", "--root", str(root)]) == 1  # the lists do not name it yet
    assert service_lists.main(["--root", str(root)]) == 0  # `make manifests`

    for overlay in ("k8s/overlays/cpu", "."):
        objects = render(root / overlay)
        assert names(objects, "Deployment") == SHIPPED | {"reverse"}, overlay
        (deployment,) = [
            o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "reverse"
        ]
        server = next(
            c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"
        )
        assert server["image"] == "modelserve/reverse:0.1.0"  # the release tag, as every service's
        assert {"reverse"} <= names(objects, "Service") & names(objects, "HorizontalPodAutoscaler")
        assert "reverse-models" in names(objects, "PersistentVolumeClaim")

    # And on KServe: the same component the shipped torch services use, from its 20-line ModelService. Its
    # settings are the one block written by hand outside its folders (k8s/kserve/base's configMapGenerator).
    kserve = root / "k8s/kserve/base/kustomization.yaml"
    kserve.write_text(
        kserve.read_text() + '  - name: reverse-config\n    literals:\n      - "REVERSE_DEVICE=cuda"\n'
    )
    objects = render(root / "k8s/kserve")
    assert names(objects, "InferenceService") == SHIPPED | {"reverse"}
    (isvc,) = [o for o in objects if o["kind"] == "InferenceService" and o["metadata"]["name"] == "reverse"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == "modelserve-reverse"
    assert predictor["scaleTarget"] == 32 and predictor["timeout"] == 60
    assert predictor["initContainers"][0]["envFrom"][0]["configMapRef"]["name"].startswith("reverse-config-")
    assert predictor["initContainers"][0]["image"] == "modelserve/reverse:0.1.0"
    assert "modelserve-reverse" in names(objects, "ServingRuntime")


LOCUST = """
import locust.main  # first: Locust patches the standard library on import
import sys
import clients, protos, services
for package, path in ((services, {services!r}), (clients, {clients!r}), (protos, {protos!r})):
    package.__path__.append(path)
from loadtests.scenario import SERVICES
assert "reverse" in SERVICES, SERVICES
sys.argv = ["locust", *sys.argv[1:]]
sys.exit(locust.main.main())
"""
# Stops once both users were answered (--answers); --run-time is only the cap.
LOCUST_OPTIONS = "-f loadtests/locustfile.py --headless -u 2 -r 2 --run-time 120s --answers 1".split()
USERS = ("ReverseRestUser", "ReverseGrpcUser")


def test_locust_runs_the_sixth_services_users(sixth_paths, tmp_path):
    services = create_services(["reverse"])
    with ServerThread(lambda: services, services[0].settings) as server:
        env = {k: v for k, v in os.environ.items() if k != "MODELSERVE_API_KEY"}
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                LOCUST.format(**sixth_paths),
                *LOCUST_OPTIONS,
                "--host",
                server.rest_url,
                "--grpc-host",
                server.grpc_target,
                "--json-file",
                str(tmp_path / "stats"),
                *USERS,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    answered = {entry["name"]: entry for entry in stats if entry["name"].startswith("reverse:")}
    assert answered.keys() == {"reverse: POST /v1/reverse", "reverse: Reverse"}  # its REST and gRPC users
    assert all(entry["num_requests"] >= 1 and entry["num_failures"] == 0 for entry in answered.values())
