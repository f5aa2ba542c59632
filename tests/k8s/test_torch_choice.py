"""The torch build `make setup` and `make images` install: TORCH=cuda|cpu, or a local wheel directory only
when TORCH_WHEELS names one (README.md, "Choosing the torch build")."""

import subprocess

import pytest
from k8s_support import REPO

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def setup_recipe(*args: str) -> str:
    """What `make setup` would run, whatever the venv's stamp says (-W: as if pyproject.toml changed)."""
    proc = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "setup", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if "torch==" in line)


def test_setup_default_is_the_pypi_wheel():
    line = setup_recipe()
    assert line.endswith("pip install -q torch==2.13.0"), line
    assert "--index-url" not in line and "--find-links" not in line


def test_setup_cpu_uses_the_pytorch_cpu_index():
    line = setup_recipe("TORCH=cpu")
    assert f"--index-url {CPU_INDEX} torch==2.13.0" in line, line


def test_setup_local_wheels_only_when_named():
    line = setup_recipe("TORCH=cpu", "TORCH_WHEELS=/srv/wheels")
    assert "--no-index --no-deps --find-links /srv/wheels torch==2.13.0" in line, line
    assert CPU_INDEX not in line, "TORCH_WHEELS overrides TORCH"


def test_unknown_torch_choice_is_refused():
    proc = subprocess.run(["make", "-n", "setup", "TORCH=rocm"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "TORCH must be cuda or cpu" in proc.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TORCH": "gpu"}, "TORCH must be cuda or cpu"),
        ({"TORCH_WHEELS": "docker/no-models"}, "holds no torch-2.13.0 wheel"),
    ],
)
def test_image_build_refuses_a_bad_torch_choice_before_building(env, message):
    # DOCKER=false: a build that got as far as docker would fail with another message.
    proc = subprocess.run(
        ["bash", "docker/build-torch-image.sh", "translation", "modelserve/translation:never"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "DOCKER": "false", **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_image_build_refuses_an_unknown_service():
    proc = subprocess.run(
        ["bash", "docker/build-torch-image.sh", "kit", "modelserve/kit:never"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "DOCKER": "false"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no torch service 'kit'" in proc.stderr
