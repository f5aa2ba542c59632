"""The maintainer's entry points: `make help` lists every target with what it does, and `make deploy` without a
cluster says in one line what is missing instead of printing tracebacks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def defined_targets() -> set[str]:
    """Every .PHONY target of the Makefile and mk/*.mk that has a rule (prerequisites or a recipe), names built by
    make functions expanded: read from make's own database."""
    database = make("-pRrq", ":").stdout
    phony = (
        next(line for line in database.splitlines() if line.startswith(".PHONY:")).split(":", 1)[1].split()
    )
    defined = set()
    for block in database.split("\n\n"):
        head, _, rest = block.partition("\n")
        name, colon, prerequisites = head.partition(":")
        if colon and name in phony and (prerequisites.strip() or "#  recipe to execute" in rest):
            defined.add(name)
    return defined


def test_help_lists_every_target_with_a_description():
    listed = make("help")
    assert listed.returncode == 0, listed.stderr
    described = {}
    for line in listed.stdout.splitlines()[1:]:
        names, description = re.match(r"  (\S+(?: \S+)*?)\s{2,}(\S.*)", line).groups()
        described.update(dict.fromkeys(names.split(), description))
    targets = defined_targets()
    entry_points = {"help", "test", "deploy", "image-translation", "image-vit-server", "loadtest", "real-asr"}
    assert entry_points <= targets
    assert sorted(targets - set(described)) == [], "targets without a `## ` description"
    assert all(described.values())


def no_cluster_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG"))}
    return {**env, "HOME": str(tmp_path), **extra}


def test_make_deploy_without_a_cluster_says_what_is_missing_in_one_line(tmp_path):
    result = make("deploy", env=no_cluster_env(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    # make's own "*** [target] Error 1" line (make[N] when make runs inside make, as under `make test`) aside.
    ours = [line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(ours) == 1, result.stderr
    assert "no Kubernetes cluster configured" in ours[0]
    assert f"no kubeconfig at {tmp_path / '.kube' / 'config'}" in ours[0]


@pytest.mark.parametrize("context", [None, "staging"])
def test_deploy_tool_names_the_missing_context(tmp_path, context):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    command = [sys.executable, "-m", "tools.deploy", *(["--context", context] if context else []), "status"]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=no_cluster_env(tmp_path, KUBECONFIG=str(kubeconfig)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    expected = f"has no usable context {context!r}" if context else "has no usable current context"
    assert f"kubeconfig {kubeconfig} {expected}" in result.stderr
