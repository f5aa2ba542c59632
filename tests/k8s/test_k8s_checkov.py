"""checkov on what gets deployed (the rendered root and overlays): only the two accepted findings.

checkov lives in its own venv (`make checkov-venv`, part of `make test`): in .venv it would
downgrade packages the services pin. It runs offline: no policy mapping, no downloads.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from k8s_support import REPO, rel

from tools.deploy import manifests

# Accepted, with the reasons in k8s/README.md: images are pinned by release tag, not by digest;
# the pull policy is IfNotPresent (a pinned tag never changes), not Always.
ACCEPTED = {"CKV_K8S_43", "CKV_K8S_15"}
CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".venv-checkov/bin/checkov"))
DEPLOYABLE = [REPO, *sorted(p.parent for p in (REPO / "k8s/overlays").glob("*/kustomization.yaml"))]

pytestmark = pytest.mark.skipif(
    not CHECKOV.exists(), reason=f"{CHECKOV} missing: `make checkov-venv` (run by `make test`) installs it"
)


def checkov(*paths: Path) -> list[dict]:
    """checkov's JSON report for these files: one entry per framework that found something to check."""
    cmd = [str(CHECKOV), "--skip-download", "-o", "json"]
    for path in paths:
        cmd += ["-f", str(path)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: checks failed
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def findings(report: list[dict]) -> list[tuple[str, str, str]]:
    return sorted(
        (Path(c["file_path"]).name, c["check_id"], c["resource"])
        for framework in report
        for c in framework["results"]["failed_checks"]
    )


@pytest.fixture(scope="module")
def overlay_report(tmp_path_factory) -> tuple[dict[str, Path], list[dict]]:
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for path in DEPLOYABLE:
        files[rel(path)] = out / (rel(path).replace("/", "_").replace(".", "root") + ".yaml")
        files[rel(path)].write_text(manifests.render_text(path))
    return files, checkov(*files.values())


def test_overlays_have_only_the_accepted_findings(overlay_report):
    files, report = overlay_report
    assert {rel(p) for p in DEPLOYABLE} >= {
        ".",
        "k8s/overlays/cpu",
        "k8s/overlays/gpu",
        "k8s/overlays/gpu-queue",
    }
    unexpected = [f for f in findings(report) if f[1] not in ACCEPTED]
    assert unexpected == [], "\n".join(" ".join(f) for f in unexpected)


def test_checkov_really_checked_every_deployment(overlay_report):
    # An empty report would also have no findings: every Deployment of every file must have been checked.
    files, report = overlay_report
    (kubernetes,) = [r for r in report if r["check_type"] == "kubernetes"]
    assert kubernetes["summary"]["parsing_errors"] == 0
    checked = {
        (Path(c["file_path"]).name, c["resource"])
        for c in kubernetes["results"]["passed_checks"] + kubernetes["results"]["failed_checks"]
    }
    for name, path in files.items():
        for dep in manifests.of_kind(manifests.render(REPO / name), "Deployment"):
            resource = f"Deployment.{dep['metadata']['namespace']}.{dep['metadata']['name']}"
            assert (path.name, resource) in checked, f"{name}: checkov did not check {resource}"


def test_checkov_reports_an_unsafe_pod(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  namespace: modelserve\nspec:\n"
        "  containers:\n    - name: c\n      image: busybox:1.36\n      securityContext:\n"
        "        privileged: true\n"
    )
    ids = {check for _, check, _ in findings(checkov(bad))}
    assert "CKV_K8S_16" in ids  # privileged container
    assert ids - ACCEPTED, "a privileged, unlimited, probe-less pod must fail more than the accepted checks"
