"""Real image builds and runs (docker/ci-image-test.sh: translation from docker/torch.Dockerfile with CPU torch;
docker/ci-vit-server-image-test.sh: modelserve/vit-server from docker/vit-server.Dockerfile):
needs a Docker engine, skipped without one.

.ci/run starts one with docker/start-dockerd.sh; locally: eval "$(docker/start-dockerd.sh)".
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from k8s_support import REPO

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
DEFAULT_SOCKETS = ("/run/modelserve-docker/docker.sock", "/var/run/docker.sock")


def docker_host() -> str | None:
    """DOCKER_HOST if set, else the socket start-dockerd.sh uses, else the standard one - if it answers."""
    candidates = (
        [os.environ["DOCKER_HOST"]]
        if os.environ.get("DOCKER_HOST")
        else [f"unix://{s}" for s in DEFAULT_SOCKETS]
    )
    for host in candidates:
        if host.startswith("unix://") and not Path(host[len("unix://") :]).exists():
            continue
        env = {**os.environ, "DOCKER_HOST": host}
        try:
            if subprocess.run([DOCKER, "version"], env=env, capture_output=True, timeout=20).returncode == 0:
                return host
        except (subprocess.TimeoutExpired, OSError, TypeError):
            continue
    return None


HOST = docker_host() if DOCKER else None


@pytest.mark.skipif(HOST is None, reason="no reachable Docker engine (docker/start-dockerd.sh starts one)")
@pytest.mark.timeout(1500)
def test_translation_image_builds_serves_and_drains():
    if not (REPO / "services/translation/__main__.py").exists():
        pytest.fail("services/translation is missing")
    proc = subprocess.run(
        ["bash", str(REPO / "docker/ci-image-test.sh")],
        cwd=REPO,
        env={**os.environ, "DOCKER_HOST": HOST, "DOCKER": DOCKER},
        capture_output=True,
        text=True,
        timeout=1450,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
    assert "ok: built, ready, translated, drained, exit 0" in proc.stderr


@pytest.mark.skipif(HOST is None, reason="no reachable Docker engine (docker/start-dockerd.sh starts one)")
@pytest.mark.timeout(1500)
def test_vit_server_image_builds_serves_v2_and_drains():
    """modelserve/vit-server, the image of KServe's ViT runtime (docker/ci-vit-server-image-test.sh)."""
    proc = subprocess.run(
        ["bash", str(REPO / "docker/ci-vit-server-image-test.sh")],
        cwd=REPO,
        env={**os.environ, "DOCKER_HOST": HOST, "DOCKER": DOCKER},
        capture_output=True,
        text=True,
        timeout=1450,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
    assert "ok: built, ready, classified over v2 and :predict, drained, exit 0" in proc.stderr
