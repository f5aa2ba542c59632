"""Admin operations are admin: TF Serving's ModelService/HandleReloadConfigRequest on the ViT server is off
unless VIT_ALLOW_RELOAD, needs an admin key when keys are configured, loads base paths under VIT_MODEL_ROOT
only, and refuses a config that would unload what is served (empty, or naming nothing loadable) before
swapping anything. In-process ViT servers over a copy of the tiny SavedModel."""

import base64
import io
import os
import shutil
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

import services.kit.auth as auth
from services.kit.testing import ServerThread
from services.vit.server import create_service
from services.vit.settings import ViTSettings
from tools.deploy import manifests

MODEL = "hf-vit"
USER_KEY = "sk-user-0123456789"
ADMIN_KEY = "sk-admin-0123456789"


@pytest.fixture(scope="module")
def model_root(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vit-root")
    shutil.copytree(models_dir / "vit-serving" / MODEL, root / MODEL)
    return root


def vit_server(root, env: dict[str, str], **settings) -> ServerThread:
    options = dict(model_base=root, model_name=MODEL, checkpoint=None, poll_interval_s=0, threads=1, log_level="warning")
    vit_settings = ViTSettings(**{**options, **settings})
    server = ServerThread(lambda: [create_service(vit_settings)], vit_settings)
    with pytest.MonkeyPatch.context() as patch:  # keys are read when the server is built
        for name in (auth.KEYS_ENV, auth.KEYS_FILE_ENV, auth.ADMIN_KEYS_ENV, auth.ADMIN_KEYS_FILE_ENV):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        server.start()
    return server


@pytest.fixture(scope="module")
def reload_off(model_root):
    server = vit_server(model_root, {})
    yield server
    server.stop()
    server.services[0].runner.close()


@pytest.fixture(scope="module")
def reload_on(model_root):
    """Reload enabled, keys on: ordinary and admin keys."""
    server = vit_server(
        model_root, {auth.KEYS_ENV: USER_KEY, auth.ADMIN_KEYS_ENV: ADMIN_KEY}, allow_reload=True
    )
    yield server
    server.stop()
    server.services[0].runner.close()


def metadata(key: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")] if key else []


def config(*models: tuple[str, str]) -> model_server_config_pb2.ModelServerConfig:
    built = model_server_config_pb2.ModelServerConfig()
    built.model_config_list.SetInParent()
    for name, base_path in models:
        built.model_config_list.config.add(name=name, base_path=str(base_path), model_platform="tensorflow")
    return built


def reload(server: ServerThread, new_config, key: str | None):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest(config=new_config)
        return stub.HandleReloadConfigRequest(request, timeout=120, metadata=metadata(key))


def refused(server: ServerThread, new_config, key: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        reload(server, new_config, key)
    return caught.value


def classify(server: ServerThread, key: str | None = None, model: str = MODEL) -> str:
    """Predict over gRPC: the label of one small image."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, "PNG")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["string_input"].CopyFrom(
        tf.make_tensor_proto([base64.urlsafe_b64encode(buffer.getvalue()).decode()])
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=60, metadata=metadata(key)
        )
    return tf.make_ndarray(response.outputs["label"])[0].decode()


def test_reload_is_off_by_default_and_an_empty_config_unloads_nothing(reload_off):
    label = classify(reload_off)
    error = refused(reload_off, config(), None)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "VIT_ALLOW_RELOAD" in error.details()
    assert classify(reload_off) == label, "the model is still served"


def test_reload_needs_an_admin_key_when_keys_are_on(reload_on, model_root):
    same = config((MODEL, model_root / MODEL))
    assert refused(reload_on, same, None).code() == grpc.StatusCode.UNAUTHENTICATED
    denied = refused(reload_on, same, USER_KEY)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "MODELSERVE_ADMIN_KEYS" in denied.details()
    assert refused(reload_on, config(), USER_KEY).code() == grpc.StatusCode.PERMISSION_DENIED
    # Reading the status stays open to ordinary keys.
    with grpc.insecure_channel(reload_on.grpc_target) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL}), timeout=30,
            metadata=metadata(USER_KEY),
        )
    assert [v.state for v in status.model_version_status] == [get_model_status_pb2.ModelVersionStatus.AVAILABLE]
    assert classify(reload_on, USER_KEY)


def test_an_empty_or_unloadable_config_is_refused_and_the_model_keeps_serving(reload_on, model_root, tmp_path):
    label = classify(reload_on, USER_KEY)
    (model_root / "empty-model").mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    shutil.copytree(model_root / MODEL, outside / MODEL)
    escape = model_root / "escape"
    if not escape.exists():
        escape.symlink_to(outside / MODEL)
    cases = [
        (config(), "lists no model"),
        (config((MODEL, model_root / "no-such-model")), "no version under"),
        (config((MODEL, model_root / "empty-model")), "no version under"),
        (config((MODEL, outside / MODEL)), "VIT_MODEL_ROOT"),
        (config((MODEL, model_root / os.path.relpath(outside / MODEL, model_root))), "VIT_MODEL_ROOT"),
        (config((MODEL, escape)), "VIT_MODEL_ROOT"),
        (config(("other", "/etc")), "VIT_MODEL_ROOT"),
    ]
    for bad, message in cases:
        error = refused(reload_on, bad, ADMIN_KEY)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, error.details())
        assert message in error.details(), error.details()
        assert classify(reload_on, USER_KEY) == label, f"the model stopped serving after {bad}"


def test_a_valid_reload_by_an_admin_still_works(reload_on, model_root):
    twin = model_root / "hf-vit-twin"
    if not twin.exists():
        shutil.copytree(model_root / MODEL, twin)
    try:
        response = reload(reload_on, config((MODEL, model_root / MODEL), ("twin", twin)), ADMIN_KEY)
        assert response.status.error_code == 0
        assert classify(reload_on, USER_KEY, model="twin") == classify(reload_on, USER_KEY)
    finally:
        reload(reload_on, config((MODEL, model_root / MODEL)), ADMIN_KEY)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the manifests")
@pytest.mark.parametrize("overlay", ["k8s/overlays/gpu", "k8s/overlays/cpu", "k8s/overlays/gpu-vit-on-cpu"])
def test_the_tensorflow_serving_pods_grpc_port_admits_only_labelled_clients(overlay):
    """The production image serves HandleReloadConfigRequest to whoever reaches :8500: the NetworkPolicy is
    the only guard, so it must not admit every pod of the namespace or of an access-labelled namespace."""
    objects = manifests.render(Path(__file__).resolve().parents[2] / overlay)
    (policy,) = [p for p in manifests.of_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "vit"]
    grpc_peers = [
        peer
        for rule in policy["spec"]["ingress"]
        if any(port["port"] in ("grpc", 8500) for port in rule.get("ports", [])) or not rule.get("ports")
        for peer in rule.get("from", [{}])
    ]
    assert grpc_peers, "no rule admits ViT clients"
    for peer in grpc_peers:
        assert peer.get("podSelector", {}).get("matchLabels") == {"modelserve.io/vit-client": "true"}, peer
