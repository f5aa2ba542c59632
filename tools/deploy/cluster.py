"""Everything that talks to the API server: apply, wait, report, roll back, delete."""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import manifests
from .rollout import deployment_status, pod_failure, previous_replicaset, rollback_patch

FIELD_MANAGER = "modelserve-deploy"


class NoClusterError(RuntimeError):
    """Neither a usable kubeconfig context nor a pod's service account to reach a cluster with."""


def no_cluster_reason(context: str | None, kubeconfig_error: Exception) -> str:
    value = os.environ.get("KUBECONFIG")
    paths = [p for p in value.split(os.pathsep) if p] if value else [str(Path("~/.kube/config").expanduser())]
    found = [p for p in paths if Path(p).is_file()]
    if not found:
        missing = f"no kubeconfig at {', '.join(paths)}"
    elif context:
        missing = f"kubeconfig {', '.join(found)} has no usable context {context!r} ({kubeconfig_error})"
    else:
        missing = f"kubeconfig {', '.join(found)} has no usable current context ({kubeconfig_error})"
    return (
        f"no Kubernetes cluster configured: {missing}, and this is not a pod with a service account; "
        "point KUBECONFIG at your cluster's kubeconfig and pick a context (kubectl config use-context NAME)"
    )


@dataclass
class Cluster:
    api: client.ApiClient
    console: Console = field(default_factory=Console)

    @classmethod
    def connect(cls, context: str | None = None, console: Console | None = None) -> "Cluster":
        """The kubeconfig's context (`context`, else its current one), else the pod's service account; raises
        `NoClusterError` saying what is missing when there is neither."""
        try:
            config.load_kube_config(context=context)
        except config.ConfigException as kubeconfig_error:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise NoClusterError(no_cluster_reason(context, kubeconfig_error)) from None
        return cls(client.ApiClient(), console or Console())

    @property
    def dynamic(self) -> DynamicClient:
        if not hasattr(self, "_dynamic"):
            self._dynamic = DynamicClient(self.api)
        return self._dynamic

    # -- apply / delete -------------------------------------------------------------------------

    def apply(self, objects: list[dict], dry_run: bool = False) -> dict[str, int]:
        """Server-side apply in dependency order; returns the applied Deployments' generations."""
        generations: dict[str, int] = {}
        for obj in manifests.apply_order(objects):
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            result = self.dynamic.server_side_apply(
                resource,
                body=obj,
                namespace=obj["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                # This tool owns these fields; a hand edit (kubectl edit/scale) is overwritten.
                force_conflicts=True,
                dry_run="All" if dry_run else None,
            )
            self.console.print(f"[green]applied[/] {manifests.key(obj)}")
            if obj["kind"] == "Deployment":
                generations[obj["metadata"]["name"]] = result.metadata.generation
        return generations

    def delete(self, objects: list[dict], keep: set[str]) -> None:
        for obj in manifests.delete_order(objects):
            if obj["kind"] in keep:
                self.console.print(f"[yellow]kept[/] {manifests.key(obj)}")
                continue
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            try:
                self.dynamic.delete(
                    resource,
                    name=obj["metadata"]["name"],
                    namespace=obj["metadata"].get("namespace"),
                    body={"propagationPolicy": "Foreground"},
                )
                self.console.print(f"[red]deleted[/] {manifests.key(obj)}")
            except NotFoundError:
                self.console.print(f"[dim]absent[/] {manifests.key(obj)}")

    # -- rollouts --------------------------------------------------------------------------------

    def _new_pods(self, dep: client.V1Deployment) -> list[client.V1Pod]:
        """Pods of the Deployment's current template (the pod-template-hash of its newest ReplicaSet)."""
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        ns = dep.metadata.namespace
        selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
        current = (dep.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
        hashes = [
            rs.metadata.labels.get("pod-template-hash")
            for rs in apps.list_namespaced_replica_set(ns, label_selector=selector).items
            if (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision") == current
        ]
        if not hashes:
            return []
        return core.list_namespaced_pod(ns, label_selector=f"{selector},pod-template-hash={hashes[0]}").items

    def wait(
        self, namespace: str, generations: dict[str, int], timeout_s: float, poll_s: float = 2.0
    ) -> dict[str, str]:
        """Watch every Deployment until rolled out; returns {name: failure message} for the failed ones."""
        apps = client.AppsV1Api(self.api)
        failures: dict[str, str] = {}
        pending = dict(generations)
        deadline = time.monotonic() + timeout_s
        columns = [
            SpinnerColumn(),
            TextColumn("{task.fields[name]:<12}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} ready"),
            TextColumn("{task.fields[msg]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console) as progress:
            tasks = {n: progress.add_task(n, name=n, msg="", total=1) for n in pending}
            while pending:
                for name in list(pending):
                    dep = apps.read_namespaced_deployment(name, namespace)
                    st = deployment_status(dep, pending[name])
                    reason = st.message if st.failed else None
                    if not st.done and not reason:
                        reason = next(filter(None, map(pod_failure, self._new_pods(dep))), None)
                    desired = dep.spec.replicas if dep.spec.replicas is not None else 1
                    progress.update(
                        tasks[name],
                        total=max(desired, 1),
                        completed=min(dep.status.available_replicas or 0, desired),
                        msg=st.message,
                    )
                    if st.done:
                        progress.update(tasks[name], msg="[green]rolled out")
                        del pending[name]
                    elif reason:
                        progress.update(tasks[name], msg=f"[red]{reason}")
                        failures[name] = reason
                        del pending[name]
                if pending and time.monotonic() > deadline:
                    for name in pending:
                        failures[name] = f"{name}: not rolled out after {timeout_s:.0f} s"
                    break
                if pending:
                    time.sleep(poll_s)
        return failures

    def rollback(self, namespace: str, name: str) -> bool:
        apps = client.AppsV1Api(self.api)
        dep = apps.read_namespaced_deployment(name, namespace)
        selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
        rs = previous_replicaset(
            dep, apps.list_namespaced_replica_set(namespace, label_selector=selector).items
        )
        if rs is None:
            self.console.print(f"[red]{name}: no previous revision to roll back to[/]")
            return False
        # A list body makes the client send application/json-patch+json.
        apps.patch_namespaced_deployment(name, namespace, rollback_patch(dep, rs))
        self.console.print(
            f"[yellow]{name}: rolled back to revision "
            f"{rs.metadata.annotations['deployment.kubernetes.io/revision']}[/]"
        )
        return True

    # -- report ----------------------------------------------------------------------------------

    def report(self, namespace: str, selector: str = "app.kubernetes.io/part-of=modelserve") -> None:
        core = client.CoreV1Api(self.api)
        pods = Table(title=f"Pods in {namespace}")
        for col in ("pod", "phase", "ready", "restarts", "node"):
            pods.add_column(col)
        for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
            statuses = pod.status.container_statuses or []
            pods.add_row(
                pod.metadata.name,
                pod.status.phase,
                f"{sum(s.ready for s in statuses)}/{len(statuses)}",
                str(sum(s.restart_count for s in statuses)),
                pod.spec.node_name or "-",
            )
        self.console.print(pods)

        hpas = Table(title="HorizontalPodAutoscalers")
        for col in ("hpa", "replicas (current/desired)", "min-max", "metrics (current / target)"):
            hpas.add_column(col)
        for hpa in (
            client.AutoscalingV2Api(self.api).list_namespaced_horizontal_pod_autoscaler(namespace).items
        ):
            hpas.add_row(
                hpa.metadata.name,
                f"{hpa.status.current_replicas}/{hpa.status.desired_replicas}",
                f"{hpa.spec.min_replicas}-{hpa.spec.max_replicas}",
                describe_hpa_metrics(hpa),
            )
        self.console.print(hpas)

        endpoints = Table(title="Service endpoints")
        for col in ("service", "ports", "ready endpoints"):
            endpoints.add_column(col)
        discovery = client.DiscoveryV1Api(self.api)
        for svc in core.list_namespaced_service(namespace, label_selector=selector).items:
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={svc.metadata.name}"
            ).items
            addresses = [
                a
                for s in slices
                for e in (s.endpoints or [])
                if (e.conditions and e.conditions.ready)
                for a in e.addresses
            ]
            ports = ", ".join(f"{p.name}:{p.port}" for p in svc.spec.ports)
            endpoints.add_row(svc.metadata.name, ports, ", ".join(addresses) or "[red]none")
        self.console.print(endpoints)


def describe_hpa_metrics(hpa: client.V2HorizontalPodAutoscaler) -> str:
    """'cpu 35%/70%' or 'serving_queue_depth 1200m/4' for each metric (current unknown: '?')."""
    current = {}
    for m in hpa.status.current_metrics or []:
        if m.type == "Resource" and m.resource:
            cur = m.resource.current
            current[m.resource.name] = (
                f"{cur.average_utilization}%"
                if cur.average_utilization is not None
                else str(cur.average_value)
            )
        elif m.type == "Pods" and m.pods:
            current[m.pods.metric.name] = str(m.pods.current.average_value)
    parts = []
    for m in hpa.spec.metrics or []:
        if m.type == "Resource" and m.resource:
            t = m.resource.target
            target = (
                f"{t.average_utilization}%" if t.average_utilization is not None else str(t.average_value)
            )
            parts.append(f"{m.resource.name} {current.get(m.resource.name, '?')}/{target}")
        elif m.type == "Pods" and m.pods:
            parts.append(
                f"{m.pods.metric.name} {current.get(m.pods.metric.name, '?')}/{m.pods.target.average_value}"
            )
        else:
            parts.append(m.type)
    return ", ".join(parts)


__all__ = ["Cluster", "ApiException", "describe_hpa_metrics", "FIELD_MANAGER"]
