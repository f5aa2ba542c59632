"""Shared helpers for tests/k8s (imported by name: pytest puts this folder on sys.path)."""

import functools
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tools.deploy, when pytest runs from elsewhere

from services.registry import entries  # noqa: E402
from tools.deploy import manifests  # noqa: E402

# Every declared service (services/<name>/registry.py): the manifests must deploy each of them.
ALL_SERVICES = tuple(entries())
TORCH_SERVICES = tuple(name for name, entry in entries().items() if entry.torch)


# KServe custom resources: test_kserve.py validates them against KServe's own API types.
KSERVE = REPO / "k8s/kserve"


def kustomizations() -> list[Path]:
    """Every renderable kustomization of plain Kubernetes objects (Components render only inside one,
    via overlays/gpu-queue)."""
    found = [REPO]
    for path in sorted((REPO / "k8s").rglob("kustomization.yaml")):
        if KSERVE in path.parents:
            continue
        if yaml.safe_load(path.read_text()).get("kind") != "Component":
            found.append(path.parent)
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) or "."


@functools.cache
def render(path: Path) -> tuple[dict, ...]:
    return tuple(manifests.render(path))


def tool(name: str) -> str:
    """A console script from this venv (the dev extra), else from PATH; missing is a failure."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    assert found, f"{name} not installed (pip install -e .[dev])"
    return found
