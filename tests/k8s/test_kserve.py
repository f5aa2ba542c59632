"""k8s/kserve: the five services as KServe InferenceServices, checked without a cluster.

Every rendered InferenceService and ServingRuntime is walked field by field against the model classes
KServe's Python SDK generates from its API (`openapi_types` and `attribute_map` per class), descending into
the Kubernetes types they embed (V1Container, V1Probe, ...) from the `kubernetes` client. An unknown field or
a value of the wrong type fails, naming its path. The plain objects beside them (Namespace, PVCs,
ConfigMaps) go through kubernetes-validate as in test_k8s_validate.py.

`kserve` is installed with --no-deps (`make kserve-models`, part of `make test`): its protobuf<7 pin clashes
with the project's protobuf 7. Its package __init__ imports the whole model server (cloudevents, fastapi,
grpc, ...), which --no-deps leaves out, so the generated model modules are loaded without running it.
"""

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import types
from functools import cache
from pathlib import Path

import kubernetes.client.models as k8s_models
import pytest
import yaml
from k8s_support import ALL_SERVICES, REPO, TORCH_SERVICES, render
from kubernetes.utils import parse_quantity
from test_k8s_validate import validate

from tools.deploy import manifests

KSERVE = REPO / "k8s/kserve"
BASE = KSERVE / "base"
RENDERS = [KSERVE, BASE, KSERVE / "overlays/canary", KSERVE / "overlays/grpc"]
KSERVE_KINDS = {
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
    "ClusterServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ClusterServingRuntime"),
}
# Python types a JSON value of each OpenAPI primitive may have (bool is an int in Python: refused apart).
PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
    "bytes": (str,),
}
# The kubernetes client types resource quantities as str; the API takes numbers too (nvidia.com/gpu: 1).
QUANTITY = "ResourceQuantity"
QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"): f"dict(str, {QUANTITY})",
    ("V1ResourceRequirements", "requests"): f"dict(str, {QUANTITY})",
    ("V1VolumeResourceRequirements", "limits"): f"dict(str, {QUANTITY})",
    ("V1VolumeResourceRequirements", "requests"): f"dict(str, {QUANTITY})",
    ("V1EmptyDirVolumeSource", "size_limit"): QUANTITY,
}
# KServe names the Kubernetes types it embeds by Go package (K8sIoApiAppsV1DeploymentStrategy);
# the kubernetes client calls them V1DeploymentStrategy.
GO_PACKAGE_NAME = re.compile(r"K8sIoApi[A-Z][a-z]+(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)")


@cache
def kserve_models() -> types.SimpleNamespace:
    """kserve/models/*.py, imported without kserve/__init__.py."""
    spec = importlib.util.find_spec("kserve")
    assert spec is not None and spec.submodule_search_locations, (
        "the kserve package is missing: `make kserve-models` (run by `make test`) installs it with --no-deps"
    )
    saved = {name: mod for name, mod in sys.modules.items() if name == "kserve" or name.startswith("kserve.")}
    package = types.ModuleType("kserve")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["kserve"] = package
    try:
        models = importlib.import_module("kserve.models")
    finally:
        # A real `import kserve` elsewhere must not find this bare stand-in.
        for name in [n for n in sys.modules if n == "kserve" or n.startswith("kserve.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    return types.SimpleNamespace(**{n: getattr(models, n) for n in dir(models) if n[:1] == "V"})


def model_class(type_name: str):
    match = GO_PACKAGE_NAME.fullmatch(type_name)
    name = match.group(1) + match.group(2) if match else type_name
    for source in (kserve_models(), k8s_models):
        if hasattr(source, name):
            return getattr(source, name)
    return None


def collection(type_name: str) -> tuple[str, str] | None:
    """("list", item type) or ("dict", value type) for the generators' spellings: list[X] and dict(str, X)
    (KServe), List[X] and Dict[str, X] (kubernetes client)."""
    for opener, closer, kind in (("list[", "]", "list"), ("dict(", ")", "dict"), ("dict[", "]", "dict")):
        if type_name.lower().startswith(opener) and type_name.endswith(closer):
            inner = type_name[len(opener) : -1]
            return (kind, inner.partition(", ")[2]) if kind == "dict" else (kind, inner)
    return None


def check(value, type_name: str, path: str, problems: list[str]):
    """`value` (decoded YAML) against an OpenAPI type name; returns the model object built from it."""
    shape = collection(type_name)
    if shape and shape[0] == "list":
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list ({type_name}), got {type(value).__name__}")
            return None
        return [check(item, shape[1], f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if shape:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map ({type_name}), got {type(value).__name__}")
            return None
        for key in value:
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} is not a string")
        return {k: check(v, shape[1], f"{path}.{k}", problems) for k, v in value.items()}
    if type_name == QUANTITY:
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(type(value).__name__)
            parse_quantity(value)
        except ValueError as error:
            problems.append(f"{path}: {value!r} is not a resource quantity ({error})")
        return str(value)  # the client's own spelling of a quantity
    if type_name in PRIMITIVES:
        wrong_bool = isinstance(value, bool) and type_name in ("int", "float")
        if wrong_bool or not isinstance(value, PRIMITIVES[type_name]):
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    cls = model_class(type_name)
    if cls is None:
        problems.append(f"{path}: type {type_name} is neither in kserve.models nor in kubernetes.client")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return None
    attribute_of = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    found_before = len(problems)
    kwargs = {}
    for key, item in value.items():
        attr = attribute_of.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: unknown field ({type_name} has no {key!r})")
            continue
        field_type = QUANTITY_FIELDS.get((cls.__name__, attr), cls.openapi_types[attr])
        kwargs[attr] = check(item, field_type, f"{path}.{key}", problems)
    if len(problems) > found_before:
        return None  # reported below this object already; building it would only echo that
    try:
        # The generated constructors refuse missing required fields (pydantic models in the kubernetes
        # client, setters in KServe's); pydantic's ValidationError is a ValueError.
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        problems.append(f"{path}: {' '.join(str(error).split())}")
        return None


def kserve_problems(obj: dict) -> list[str]:
    kind = obj.get("kind")
    if kind not in KSERVE_KINDS:
        return [f"{kind}: not a KServe kind this test knows"]
    api_version, class_name = KSERVE_KINDS[kind]
    where = f"{kind}/{obj.get('metadata', {}).get('name')}"
    problems = []
    if obj.get("apiVersion") != api_version:
        problems.append(
            f"{where}: apiVersion {obj.get('apiVersion')!r}, KServe serves {kind} as {api_version}"
        )
    check(obj, class_name, where, problems)
    return problems


def is_kserve(obj: dict) -> bool:
    return obj.get("apiVersion", "").startswith("serving.kserve.io/")


def by_kind(objects, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in manifests.of_kind(objects, kind)}


def config_data(objects) -> dict[str, dict]:
    """ConfigMap data by generator name (without kustomize's hash suffix)."""
    return {
        c["metadata"]["name"].rsplit("-", 1)[0]: c["data"] for c in manifests.of_kind(objects, "ConfigMap")
    }


def render_all(path: Path = BASE) -> list[dict]:
    return list(render(path))


# --- the API schema check --------------------------------------------------------------------------------


def test_kserve_models_load_without_the_model_server():
    models = kserve_models()
    assert models.V1beta1InferenceService.attribute_map["api_version"] == "apiVersion"
    assert models.V1beta1ModelSpec.openapi_types["protocol_version"] == "str"
    assert models.V1alpha1ServingRuntimeSpec.openapi_types["protocol_versions"] == "list[str]"
    assert "kserve" not in sys.modules or hasattr(sys.modules["kserve"], "__file__")


@pytest.mark.parametrize("path", RENDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_kserve_object_is_valid_against_kserve_api(path):
    objects = render_all(path)
    custom = [o for o in objects if is_kserve(o)]
    assert {o["kind"] for o in custom} == {"InferenceService", "ServingRuntime"}
    problems = [p for o in custom for p in kserve_problems(o)]
    assert problems == []


@pytest.mark.parametrize("path", RENDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_plain_objects_are_valid_kubernetes(path, tmp_path):
    plain = [o for o in render_all(path) if not is_kserve(o)]
    assert {o["kind"] for o in plain} == {"Namespace", "PersistentVolumeClaim", "ConfigMap"}
    out = tmp_path / "plain.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    assert validate(out) == []


ISVC_TEMPLATE = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: x}
spec:
  predictor:
    minReplicas: 0
    model:
      modelFormat: {name: modelserve-x}
      protocolVersion: v2
      env: [{name: A, value: "1"}]
      resources: {limits: {nvidia.com/gpu: 1, memory: 4Gi}}
"""


def isvc(**changes) -> dict:
    obj = yaml.safe_load(ISVC_TEMPLATE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return obj


def test_validator_passes_a_correct_inference_service():
    assert kserve_problems(isvc()) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # A misspelt KServe field: protocolVersions belongs to ServingRuntimes, not to a model.
        (
            {"spec__predictor__model__protocolVersions": ["v2"]},
            "InferenceService/x.spec.predictor.model.protocolVersions: unknown field",
        ),
        ({"spec__predictor__minReplica": 0}, "InferenceService/x.spec.predictor.minReplica: unknown field"),
        (
            {"spec__predictor__minReplicas": "0"},
            "InferenceService/x.spec.predictor.minReplicas: expected int",
        ),
        (
            {"spec__predictor__minReplicas": True},
            "InferenceService/x.spec.predictor.minReplicas: expected int",
        ),
        (
            {"spec__predictor__canaryTrafficPercent": "10%"},
            "spec.predictor.canaryTrafficPercent: expected int",
        ),
        (
            {"spec__predictor__model__protocolVersion": 2},
            "spec.predictor.model.protocolVersion: expected str",
        ),
        # Inside the embedded Kubernetes types: an env value must be a string, a container field must exist.
        ({"spec__predictor__model__env__0__value": 1}, "spec.predictor.model.env[0].value: expected str"),
        (
            {"spec__predictor__model__env__0__valueFrm": "x"},
            "spec.predictor.model.env[0].valueFrm: unknown field",
        ),
        ({"spec__predictor__model__env": {"A": "1"}}, "spec.predictor.model.env: expected a list"),
        (
            {"spec__predictor__model__resources__limits__memory": "4 gigs"},
            "spec.predictor.model.resources.limits.memory: '4 gigs' is not a resource quantity",
        ),
        (
            {"spec__predictor__tolerations": [{"keyy": "a"}]},
            "spec.predictor.tolerations[0].keyy: unknown field",
        ),
        # Required by the API: an env var without a name.
        (
            {"spec__predictor__model__env": [{"value": "1"}]},
            ("spec.predictor.model.env[0]: ", "name", "required"),
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_validator_catches_unknown_fields_and_wrong_types(changes, expected):
    parts = (expected,) if isinstance(expected, str) else expected
    problems = kserve_problems(isvc(**changes))
    assert any(all(part in p for part in parts) for p in problems), problems


def test_validator_catches_wrong_api_version_and_kind():
    assert "KServe serves InferenceService as serving.kserve.io/v1beta1" in " ".join(
        kserve_problems(isvc(apiVersion="serving.kserve.io/v1alpha1"))
    )
    assert kserve_problems({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceSvc"})


def test_validator_catches_a_misspelt_serving_runtime_field():
    (runtime,) = [o for o in render_all() if o["kind"] == "ServingRuntime" and "vit" in o["metadata"]["name"]]
    runtime = yaml.safe_load(yaml.safe_dump(runtime))
    runtime["spec"]["protocolVersion"] = runtime["spec"].pop("protocolVersions")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8501"
    assert sorted(kserve_problems(runtime)) == [
        "ServingRuntime/modelserve-vit.spec.containers[0].ports[0].containerPort: expected int, got str '8501'",
        "ServingRuntime/modelserve-vit.spec.protocolVersion: unknown field "
        "(V1alpha1ServingRuntimeSpec has no 'protocolVersion')",
    ]


# --- what the manifests say ------------------------------------------------------------------------------


def runtime_of(objects, service: str) -> tuple[dict, dict]:
    isvc = by_kind(objects, "InferenceService")[service]
    runtimes = by_kind(objects, "ServingRuntime")
    model = isvc["spec"]["predictor"]["model"]
    runtime = runtimes[model["runtime"]]
    return isvc, runtime


def test_one_inference_service_per_service_on_its_own_runtime_speaking_v2():
    objects = render_all(KSERVE)
    assert set(by_kind(objects, "InferenceService")) == set(ALL_SERVICES)
    for service in ALL_SERVICES:
        isvc, runtime = runtime_of(objects, service)
        model = isvc["spec"]["predictor"]["model"]
        assert model["protocolVersion"] == "v2", service
        assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"]), service
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats, service
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        assert isvc["metadata"]["namespace"] == runtime["metadata"]["namespace"] == "modelserve-kserve"


def plain_server(service: str) -> dict:
    """The server container the production overlay deploys for this service."""
    (dep,) = [
        d
        for d in manifests.of_kind(render(REPO / "k8s/overlays/gpu"), "Deployment")
        if d["metadata"]["name"] == service
    ]
    return dep


def test_torch_services_run_the_plain_images_ports_commands_and_resources():
    objects = render_all()
    for service in TORCH_SERVICES:
        isvc, runtime = runtime_of(objects, service)
        (container,) = runtime["spec"]["containers"]
        dep = plain_server(service)
        pod = dep["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        (fetch,) = pod["initContainers"]
        (init,) = isvc["spec"]["predictor"]["initContainers"]
        assert container["name"] == "kserve-container"
        assert container["image"] == server["image"] == init["image"], service
        http = next(p["containerPort"] for p in server["ports"] if p["name"] == "http")
        assert [p["containerPort"] for p in container["ports"]] == [http], service
        assert init["command"] == fetch["command"], service
        assert isvc["spec"]["predictor"]["model"]["resources"] == server["resources"], service
        assert isvc["spec"]["predictor"]["nodeSelector"] == pod["nodeSelector"], service
        assert isvc["spec"]["predictor"]["tolerations"] == pod["tolerations"], service


def test_vit_runs_the_v2_server_on_tf_serving_ports_in_the_release():
    objects = render_all()
    isvc, runtime = runtime_of(objects, "vit")
    (container,) = runtime["spec"]["containers"]
    name, _, tag = container["image"].rpartition(":")
    # services/vit (which speaks v2), not tensorflow/serving (which cannot).
    assert name == "modelserve/vit-server"
    release = plain_server("translation")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert tag == release.rpartition(":")[2]
    plain = plain_server("vit")["spec"]["template"]["spec"]["containers"][0]
    http = next(p["containerPort"] for p in plain["ports"] if p["name"] == "http")
    assert [p["containerPort"] for p in container["ports"]] == [http]
    assert config_data(objects)["vit-config"]["VIT_REST_PORT"] == str(http)
    assert "nvidia.com/gpu" not in isvc["spec"]["predictor"]["model"]["resources"]["limits"]


def test_settings_match_the_production_overlay():
    ours = config_data(render_all())
    plain = config_data(render(REPO / "k8s/overlays/gpu"))
    for service in TORCH_SERVICES:
        assert ours[f"{service}-config"] == plain[f"{service}-config"], service


def test_readiness_is_the_v2_ready_endpoint_on_the_served_port():
    for service in ALL_SERVICES:
        _, runtime = runtime_of(render_all(), service)
        (container,) = runtime["spec"]["containers"]
        (port,) = container["ports"]
        assert port["name"] == "http1", service  # Knative: HTTP/1 on the one routed port
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/v2/health/ready", port["containerPort"]), service
        assert container["livenessProbe"]["httpGet"]["port"] == port["containerPort"], service


def test_every_reference_resolves_in_the_merged_pod():
    """KServe merges the runtime's pod fields into the predictor's: together they must be whole."""
    objects = render_all()
    config_maps = set(by_kind(objects, "ConfigMap"))
    claims = set(by_kind(objects, "PersistentVolumeClaim"))
    for service in ALL_SERVICES:
        isvc, runtime = runtime_of(objects, service)
        predictor = isvc["spec"]["predictor"]
        volumes = {v["name"]: v for v in runtime["spec"].get("volumes", []) + predictor.get("volumes", [])}
        containers = runtime["spec"]["containers"] + predictor.get("initContainers", [])
        for container in containers:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{service}/{container['name']}: no volume {mount['name']}"
            for source in container.get("envFrom", []):
                # Generated names carry a hash suffix: base/kustomizeconfig.yaml makes kustomize rewrite these.
                assert source["configMapRef"]["name"] in config_maps, f"{service}/{container['name']}"
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"], service
            assert container["imagePullPolicy"] == "IfNotPresent" and container["image"].count(":") == 1
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, service
        assert predictor["securityContext"]["runAsNonRoot"] is True, service
        assert predictor["automountServiceAccountToken"] is False, service


def test_scale_to_zero_everywhere_but_asr():
    isvcs = by_kind(render_all(), "InferenceService")
    to_zero = {name for name, isvc in isvcs.items() if isvc["spec"]["predictor"]["minReplicas"] == 0}
    assert to_zero == set(ALL_SERVICES) - {"asr"}
    for name, isvc in isvcs.items():
        predictor = isvc["spec"]["predictor"]
        assert predictor["maxReplicas"] >= max(predictor["minReplicas"], 1), name
        assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1, name
        retention = isvc["metadata"]["annotations"].get(
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
        )
        assert (retention is not None) == (name in to_zero), name


def test_torch_services_get_one_gpu_vit_none():
    for name, isvc in by_kind(render_all(), "InferenceService").items():
        resources = isvc["spec"]["predictor"]["model"]["resources"]
        gpus = {kind: resources[kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
        assert gpus == (
            {"requests": 1, "limits": 1} if name in TORCH_SERVICES else {"requests": None, "limits": None}
        )
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
            resources["limits"]
        )


def test_canary_overlay_sends_ten_percent_to_the_new_release():
    base = by_kind(render_all(), "InferenceService")["translation"]
    canary = by_kind(render_all(KSERVE / "overlays/canary"), "InferenceService")
    predictor = canary["translation"]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["image"] == "modelserve/translation:0.2.0"
    # A merge, not a replacement: everything else of the service is still there.
    del predictor["canaryTrafficPercent"], predictor["model"]["image"]
    assert canary["translation"] == base
    assert all(
        "canaryTrafficPercent" not in i["spec"]["predictor"] for n, i in canary.items() if n != "translation"
    )


def test_grpc_overlay_serves_grpc_v2_on_the_grpc_port():
    objects = render_all(KSERVE / "overlays/grpc")
    isvc, runtime = runtime_of(objects, "translation")
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"
    (container,) = runtime["spec"]["containers"]
    grpc_port = int(config_data(objects)["translation-config"]["TRANSLATION_GRPC_PORT"])
    assert container["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port
    assert container["livenessProbe"]["grpc"]["port"] == grpc_port
    others = by_kind(objects, "InferenceService")
    assert all(
        others[s]["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
        for s in ALL_SERVICES
        if s != "translation"
    )


def test_kserve_is_installed_by_the_project_files():
    """`make test` installs the pinned kserve --no-deps: the version here is the one the Makefile names."""
    mk = (REPO / "mk/kserve.mk").read_text()
    pinned = re.search(r"^KSERVE_VERSION \?= (\S+)$", mk, re.M).group(1)
    assert re.search(r"^test: .*kserve-models", mk, re.M)
    dist = importlib.metadata.version("kserve")
    assert dist == pinned, f"installed kserve {dist}, mk/kserve.mk pins {pinned}: run `make kserve-models`"
    assert os.path.isdir(Path(importlib.util.find_spec("kserve").origin).parent / "models")
