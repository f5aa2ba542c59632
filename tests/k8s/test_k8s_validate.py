"""Schema validation (kubernetes-validate --strict, 1.30 and 1.32) and linting (yamllint, hadolint)."""

import subprocess
import sys

import pytest
from k8s_support import REPO, kustomizations, rel, render, tool

from tools.deploy import manifests

VERSIONS = ("1.30.0", "1.32.0")


def validate(path) -> list[str]:
    """Problems kubernetes-validate reports; an object without a schema counts as one (it only warns)."""
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet"]
    for v in VERSIONS:
        cmd += ["-k", v]
    proc = subprocess.run([*cmd, str(path)], capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    problems = [x for x in lines if "Couldn't find schema" in x or x.startswith(("ERROR", "WARN"))]
    if proc.returncode != 0 and not problems:
        problems = lines or [f"exit code {proc.returncode}"]
    return problems


@pytest.mark.parametrize("path", kustomizations(), ids=rel)
def test_kubernetes_validate_strict(path, tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text(manifests.render_text(path))
    assert render(path)  # rendered and non-empty
    assert validate(out) == []


def test_validation_catches_unknown_kinds_and_fields(tmp_path):
    # The check above must be able to fail: a CRD kind (schema missing: only a WARN from the
    # tool) and a misspelt field both count.
    crd = tmp_path / "crd.yaml"
    crd.write_text("apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: x\n")
    assert any("Couldn't find schema" in p for p in validate(crd))
    typo = tmp_path / "typo.yaml"
    typo.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  prots: []\n")
    assert validate(typo)


def test_yamllint():
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-c", "k8s/yamllint.yaml", "k8s", "kustomization.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    proc = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    assert subprocess.run([tool("hadolint"), str(bad)], capture_output=True).returncode != 0
