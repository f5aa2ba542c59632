"""The deploy tool without a cluster: rollout decisions and rollback patches on real client model
objects, and the apply/wait/rollback wiring against recording fakes of the API."""

import copy
from types import SimpleNamespace

import pytest
from k8s_support import REPO, render
from kubernetes import client
from kubernetes.client import (
    V1Container,
    V1ContainerState,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Deployment,
    V1DeploymentCondition,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
    V1PodTemplateSpec,
    V1ReplicaSet,
    V1ReplicaSetSpec,
)
from rich.console import Console

from tools.deploy import __main__ as cli
from tools.deploy import cluster as cluster_mod
from tools.deploy import rollout
from tools.deploy.cluster import FIELD_MANAGER, Cluster, describe_hpa_metrics

SELECTOR = {"app.kubernetes.io/name": "translation"}


def template(image: str, pod_hash: str | None = None) -> V1PodTemplateSpec:
    labels = dict(SELECTOR)
    if pod_hash:
        labels["pod-template-hash"] = pod_hash
    return V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels=labels, annotations={"prometheus.io/scrape": "true"}),
        spec=V1PodSpec(
            containers=[V1Container(name="server", image=image, image_pull_policy="IfNotPresent")]
        ),
    )


def deployment(
    generation=2, observed=2, replicas=2, updated=2, total=2, available=2, conditions=None, revision="3"
) -> V1Deployment:
    return V1Deployment(
        metadata=V1ObjectMeta(
            name="translation",
            namespace="modelserve",
            uid="dep-uid",
            generation=generation,
            annotations={rollout.REVISION: revision, "kubernetes.io/change-cause": "bad image"},
        ),
        spec=V1DeploymentSpec(
            replicas=replicas,
            selector=V1LabelSelector(match_labels=SELECTOR),
            template=template("modelserve/t:bad"),
        ),
        status=V1DeploymentStatus(
            observed_generation=observed,
            replicas=total,
            updated_replicas=updated,
            available_replicas=available,
            conditions=conditions,
        ),
    )


def replicaset(revision: str, image: str, owner_uid="dep-uid") -> V1ReplicaSet:
    return V1ReplicaSet(
        metadata=V1ObjectMeta(
            name=f"translation-{revision}",
            annotations={rollout.REVISION: revision, "kubernetes.io/change-cause": f"deploy {image}"},
            labels={**SELECTOR, "pod-template-hash": f"h{revision}"},
            owner_references=[
                V1OwnerReference(api_version="apps/v1", kind="Deployment", name="translation", uid=owner_uid)
            ],
        ),
        spec=V1ReplicaSetSpec(
            selector=V1LabelSelector(match_labels=SELECTOR), template=template(image, f"h{revision}")
        ),
    )


# -- rollout status -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "done", "failed", "fragment"),
    [
        ({}, True, False, "rolled out (2 available)"),
        ({"generation": 3, "observed": 2}, False, False, "observe generation 3"),
        ({"updated": 1, "total": 3}, False, False, "1 of 2 new replicas updated"),
        ({"total": 3}, False, False, "1 old replicas pending termination"),
        ({"available": 1}, False, False, "1 of 2 updated replicas available"),
        ({"replicas": None, "updated": 1, "total": 1, "available": 1}, True, False, "rolled out"),
        ({"replicas": 0, "updated": 0, "total": 0, "available": 0}, True, False, "rolled out"),
    ],
)
def test_deployment_status(kwargs, done, failed, fragment):
    st = rollout.deployment_status(deployment(**kwargs))
    assert (st.done, st.failed) == (done, failed)
    assert fragment in st.message


def test_status_waits_for_the_generation_our_apply_produced():
    # The read may predate the apply's bump (a stale cache): the controller must observe ours.
    st = rollout.deployment_status(deployment(generation=2, observed=2), min_generation=3)
    assert not st.done and "generation 3" in st.message


def test_progress_deadline_exceeded_is_a_failure():
    cond = V1DeploymentCondition(
        type="Progressing", status="False", reason="ProgressDeadlineExceeded", message="slow"
    )
    st = rollout.deployment_status(deployment(available=1, conditions=[cond]))
    assert st.failed and not st.done and "progress deadline" in st.message


def test_progressing_condition_that_is_fine_is_not_a_failure():
    cond = V1DeploymentCondition(type="Progressing", status="True", reason="NewReplicaSetAvailable")
    assert rollout.deployment_status(deployment(conditions=[cond])).done


def pod(phase="Pending", waiting=None, init_waiting=None) -> V1Pod:
    def statuses(reason, name):
        if reason is None:
            return None
        state = V1ContainerState(waiting=V1ContainerStateWaiting(reason=reason, message="back-off"))
        return [
            V1ContainerStatus(name=name, image="x", image_id="", ready=False, restart_count=3, state=state)
        ]

    return V1Pod(
        metadata=V1ObjectMeta(name="translation-abc"),
        status=V1PodStatus(
            phase=phase,
            container_statuses=statuses(waiting, "server"),
            init_container_statuses=statuses(init_waiting, "fetch-models"),
        ),
    )


def test_pod_failure_reasons():
    assert rollout.pod_failure(pod(waiting="ContainerCreating")) is None
    assert rollout.pod_failure(pod(phase="Running")) is None
    assert "CrashLoopBackOff" in rollout.pod_failure(pod(waiting="CrashLoopBackOff"))
    assert "ImagePullBackOff" in rollout.pod_failure(pod(waiting="ImagePullBackOff"))
    # A failing model download (init container) is as fatal as a crashing server.
    assert "fetch-models" in rollout.pod_failure(pod(init_waiting="CrashLoopBackOff"))
    assert "failed" in rollout.pod_failure(pod(phase="Failed"))


# -- rollback -----------------------------------------------------------------------------------


def test_previous_replicaset_is_the_highest_older_revision_we_own():
    dep = deployment(revision="3")
    rss = [
        replicaset("1", "modelserve/t:v1"),
        replicaset("3", "modelserve/t:bad"),
        replicaset("2", "modelserve/t:v2"),
        replicaset("9", "other:x", owner_uid="someone-else"),
    ]
    assert rollout.previous_replicaset(dep, rss).metadata.name == "translation-2"
    assert rollout.previous_replicaset(deployment(revision="1"), rss) is None


def apply_json_patch(doc: dict, patch: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in patch:
        assert op["op"] == "replace"
        *parents, leaf = op["path"].strip("/").split("/")
        target = doc
        for part in parents:
            target = target[part]
        assert leaf in target, f"replace needs an existing member: {op['path']}"
        target[leaf] = op["value"]
    return doc


def test_rollback_patch_restores_the_previous_template():
    dep = deployment(revision="3")
    previous = replicaset("2", "modelserve/t:v2")
    patch = rollout.rollback_patch(dep, previous)

    serialize = client.ApiClient().sanitize_for_serialization
    result = apply_json_patch(serialize(dep), patch)
    template = result["spec"]["template"]
    # API field names (camelCase), the old image, and no ReplicaSet hash label.
    assert template["spec"]["containers"][0] == {
        "name": "server",
        "image": "modelserve/t:v2",
        "imagePullPolicy": "IfNotPresent",
    }
    assert template["metadata"]["labels"] == SELECTOR
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    annotations = result["metadata"]["annotations"]
    assert annotations[rollout.REVISION] == "3"  # the controller bumps it, not us
    assert annotations["kubernetes.io/change-cause"] == "deploy modelserve/t:v2"
    # The ReplicaSet object itself is untouched (its hash label still selects its pods).
    assert previous.spec.template.metadata.labels["pod-template-hash"] == "h2"


# -- wiring against fakes of the API ------------------------------------------------------------


class FakeDynamic:
    def __init__(self):
        self.calls = []
        self.resources = SimpleNamespace(get=lambda api_version, kind: (api_version, kind))

    def server_side_apply(self, resource, body, namespace, field_manager, force_conflicts, dry_run):
        self.calls.append(
            (resource[1], body["metadata"]["name"], namespace, field_manager, force_conflicts, dry_run)
        )
        return SimpleNamespace(metadata=SimpleNamespace(generation=7))


def quiet_cluster() -> Cluster:
    return Cluster(api=client.ApiClient(), console=Console(file=open("/dev/null", "w")))  # noqa: SIM115


def test_apply_is_server_side_in_order_with_our_field_manager():
    cluster = quiet_cluster()
    fake = FakeDynamic()
    cluster._dynamic = fake
    generations = cluster.apply(list(render(REPO)))
    kinds = [c[0] for c in fake.calls]
    assert kinds[0] == "Namespace" and kinds.index("ConfigMap") < kinds.index("Deployment")
    assert {c[3] for c in fake.calls} == {FIELD_MANAGER} and {c[4] for c in fake.calls} == {True}
    assert all(c[2] == "modelserve" for c in fake.calls if c[0] != "Namespace")
    assert generations == {n: 7 for n in ("translation", "asr", "tts", "imagegen", "vit")}
    cluster.apply(list(render(REPO)), dry_run=True)
    assert fake.calls[-1][5] == "All"


class FakeApps:
    """Deployments advance one read at a time through scripted states."""

    def __init__(self, script):
        self.script = {k: list(v) for k, v in script.items()}
        self.patches = []

    def read_namespaced_deployment(self, name, namespace):
        states = self.script[name]
        return states.pop(0) if len(states) > 1 else states[0]

    def list_namespaced_replica_set(self, namespace, label_selector):
        return SimpleNamespace(
            items=[replicaset("1", "modelserve/t:v1"), replicaset("2", "modelserve/t:bad")]
        )

    def patch_namespaced_deployment(self, name, namespace, body):
        self.patches.append((name, body))


def test_wait_reports_success_and_failure_then_rollback_patches(monkeypatch):
    failing = V1DeploymentCondition(type="Progressing", status="False", reason="ProgressDeadlineExceeded")
    apps = FakeApps(
        {
            "translation": [deployment(available=0), deployment(available=1), deployment()],
            "asr": [deployment(available=0), deployment(available=0, conditions=[failing])],
        }
    )
    monkeypatch.setattr(cluster_mod.client, "AppsV1Api", lambda api=None: apps)
    monkeypatch.setattr(Cluster, "_new_pods", lambda self, dep: [])
    cluster = quiet_cluster()
    failures = cluster.wait("modelserve", {"translation": 2, "asr": 2}, timeout_s=30, poll_s=0)
    assert list(failures) == ["asr"] and "progress deadline" in failures["asr"]

    apps.script["asr"] = [deployment(revision="2")]
    assert cluster.rollback("modelserve", "asr")
    ((name, body),) = apps.patches
    assert name == "asr" and body[0]["value"]["spec"]["containers"][0]["image"] == "modelserve/t:v1"


def test_wait_fails_fast_on_a_crashlooping_new_pod_and_times_out(monkeypatch):
    apps = FakeApps({"tts": [deployment(available=0)], "vit": [deployment(available=0)]})
    monkeypatch.setattr(cluster_mod.client, "AppsV1Api", lambda api=None: apps)
    monkeypatch.setattr(
        Cluster,
        "_new_pods",
        lambda self, dep: [pod(waiting="CrashLoopBackOff")] if dep is apps.script["tts"][0] else [],
    )
    failures = quiet_cluster().wait("modelserve", {"tts": 2, "vit": 2}, timeout_s=0, poll_s=0)
    assert "CrashLoopBackOff" in failures["tts"]
    assert "not rolled out after 0 s" in failures["vit"]


def test_describe_hpa_metrics():
    hpa = client.V2HorizontalPodAutoscaler(
        spec=client.V2HorizontalPodAutoscalerSpec(
            max_replicas=4,
            scale_target_ref=client.V2CrossVersionObjectReference(kind="Deployment", name="asr"),
            metrics=[
                client.V2MetricSpec(
                    type="Resource",
                    resource=client.V2ResourceMetricSource(
                        name="cpu", target=client.V2MetricTarget(type="Utilization", average_utilization=70)
                    ),
                ),
                client.V2MetricSpec(
                    type="Pods",
                    pods=client.V2PodsMetricSource(
                        metric=client.V2MetricIdentifier(name="serving_queue_depth"),
                        target=client.V2MetricTarget(type="AverageValue", average_value="4"),
                    ),
                ),
            ],
        ),
        status=client.V2HorizontalPodAutoscalerStatus(
            desired_replicas=2,
            current_metrics=[
                client.V2MetricStatus(
                    type="Resource",
                    resource=client.V2ResourceMetricStatus(
                        name="cpu", current=client.V2MetricValueStatus(average_utilization=35)
                    ),
                )
            ],
        ),
    )
    assert describe_hpa_metrics(hpa) == "cpu 35%/70%, serving_queue_depth ?/4"


def test_cli_render_needs_no_cluster(capsys):
    assert cli.main(["--path", str(REPO / "k8s/overlays/cpu"), "render"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Namespace/modelserve" and "Deployment/modelserve/translation" in out
