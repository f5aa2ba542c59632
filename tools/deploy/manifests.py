"""Rendering kustomizations and ordering the objects for apply and delete."""

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import yaml

# Dependencies first: a Deployment's ConfigMap, PVC and namespace exist before its pods
# are created; policies and autoscalers last (they only refer to workloads by name).
APPLY_ORDER = [
    "Namespace",
    "ResourceQuota",
    "LimitRange",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "StatefulSet",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
]


class RenderError(RuntimeError):
    pass


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RenderError("kubectl not found on PATH (its built-in kustomize renders the manifests)")
    return path


def render_text(path: str | Path) -> str:
    """`kubectl kustomize <path>` output (works offline, no cluster needed)."""
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def render(path: str | Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def _rank(obj: dict) -> int:
    kind = obj.get("kind", "")
    return APPLY_ORDER.index(kind) if kind in APPLY_ORDER else len(APPLY_ORDER)


def apply_order(objects: Iterable[dict]) -> list[dict]:
    """Stable sort by kind rank: unknown kinds (CRs) go last, after everything they may need."""
    return sorted(objects, key=_rank)


def delete_order(objects: Iterable[dict]) -> list[dict]:
    return list(reversed(apply_order(objects)))


def key(obj: dict) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def of_kind(objects: Iterable[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]
