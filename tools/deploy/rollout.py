"""Rollout status and rollback, on the kubernetes client's model objects.

The status logic follows `kubectl rollout status` (DeploymentStatusViewer) plus an early
failure check on the new pods, because a crash-looping model server otherwise takes the whole
progressDeadlineSeconds (20 min here) to be declared failed.
"""

from dataclasses import dataclass

from kubernetes.client import ApiClient, V1Deployment, V1Pod, V1ReplicaSet

REVISION = "deployment.kubernetes.io/revision"
# Waiting reasons that will not resolve by themselves.
FATAL_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
# kubectl rollout undo drops these: they describe the ReplicaSet, not the desired state.
ROLLBACK_SKIPPED_ANNOTATIONS = {
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "kubectl.kubernetes.io/last-applied-configuration",
}


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    failed: bool
    message: str


def deployment_status(dep: V1Deployment, min_generation: int | None = None) -> RolloutStatus:
    """Where a Deployment's rollout stands; `min_generation` is the generation our apply produced."""
    name = dep.metadata.name
    status = dep.status
    observed = (status.observed_generation if status else None) or 0
    wanted_generation = max(dep.metadata.generation or 0, min_generation or 0)
    if observed < wanted_generation:
        return RolloutStatus(
            False, False, f"{name}: waiting for the controller to observe generation {wanted_generation}"
        )
    for cond in status.conditions or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return RolloutStatus(False, True, f"{name}: progress deadline exceeded ({cond.message})")
    desired = dep.spec.replicas if dep.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    replicas = status.replicas or 0
    available = status.available_replicas or 0
    if updated < desired:
        return RolloutStatus(False, False, f"{name}: {updated} of {desired} new replicas updated")
    if replicas > updated:
        return RolloutStatus(False, False, f"{name}: {replicas - updated} old replicas pending termination")
    if available < updated:
        return RolloutStatus(False, False, f"{name}: {available} of {updated} updated replicas available")
    return RolloutStatus(True, False, f"{name}: rolled out ({available} available)")


def pod_failure(pod: V1Pod) -> str | None:
    """A reason the pod will never become ready without a change, or None."""
    status = pod.status
    if status is None:
        return None
    if status.phase == "Failed":
        return f"pod {pod.metadata.name} failed: {status.reason or status.message or 'unknown'}"
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason in FATAL_WAITING:
            return f"pod {pod.metadata.name} container {cs.name}: {waiting.reason} {waiting.message or ''}".strip()
    return None


def revision(obj) -> int:
    annotations = obj.metadata.annotations or {}
    try:
        return int(annotations.get(REVISION, "0"))
    except ValueError:
        return 0


def owned_by(rs: V1ReplicaSet, dep: V1Deployment) -> bool:
    return any(
        ref.kind == "Deployment" and ref.uid == dep.metadata.uid
        for ref in (rs.metadata.owner_references or [])
    )


def previous_replicaset(dep: V1Deployment, replicasets: list[V1ReplicaSet]) -> V1ReplicaSet | None:
    """The ReplicaSet of the revision before the Deployment's current one (what `rollout undo` picks)."""
    current = revision(dep)
    older = [rs for rs in replicasets if owned_by(rs, dep) and 0 < revision(rs) < current]
    return max(older, key=revision, default=None)


def rollback_patch(dep: V1Deployment, rs: V1ReplicaSet) -> list[dict]:
    """JSON patch restoring the ReplicaSet's pod template (and its annotations) on the Deployment.

    Mirrors kubectl's undo: the pod-template-hash label is the ReplicaSet's, not the
    Deployment's, and would make the restored template select nothing new.
    """
    template = ApiClient().sanitize_for_serialization(rs.spec.template)
    labels = template.get("metadata", {}).get("labels", {})
    labels.pop("pod-template-hash", None)
    annotations = {
        k: v for k, v in (dep.metadata.annotations or {}).items() if k in ROLLBACK_SKIPPED_ANNOTATIONS
    }
    annotations.update(
        {k: v for k, v in (rs.metadata.annotations or {}).items() if k not in ROLLBACK_SKIPPED_ANNOTATIONS}
    )
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]
