"""The model config file (VIT_MODEL_CONFIG_FILE) as tensorflow_model_server reads it: start-up checks,
labels in a first config, polling the file (VIT_MODEL_CONFIG_FILE_POLL_WAIT_SECONDS), and reloads that
remove a model while requests for it are in flight. Server-only behaviour: the contract tests cover what
both servers answer."""

import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from services.kit.errors import InvalidArgument
from services.kit.testing import ServerThread
from services.vit.errors import FailedPrecondition
from services.vit.runner import ViTRunner
from services.vit.server import create_service
from services.vit.settings import ViTSettings

MODEL = "plus"


class Plus(tf.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = tf.Variable(offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def predict(self, x):
        return {"y": x + self.offset}


@pytest.fixture(scope="module")
def base_path(tmp_path_factory) -> Path:
    """Versions 1 and 2, adding their own number."""
    base = tmp_path_factory.mktemp("config-models") / MODEL
    for version in (1, 2):
        module = Plus(float(version))
        tf.saved_model.save(module, str(base / str(version)), signatures={"serving_default": module.predict})
    return base


def config_text(base_path: Path, body: str = "", name: str = MODEL) -> str:
    return (
        f'model_config_list {{ config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
        f"{body} }} }}"
    )


def runner_for(config_file: Path, **settings) -> ViTRunner:
    return ViTRunner(
        ViTSettings(model_config_file=config_file, poll_interval_s=0, checkpoint=None, **settings)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { nme: 'x' } }", "Invalid protobuf file: '{file}': 1:"),
        (
            'model_config_list { config { name: "plus" base_path: "relative/plus" model_platform: "tensorflow" } }',
            "Expected model plus to have an absolute path or URI; got base_path()=relative/plus",
        ),
        (
            'model_config_list { config { name: "plus" base_path: "/m" model_platform: "pytorch" } }',
            "Model plus requests unsupported platform pytorch",
        ),
        (
            'model_config_list { config { name: "plus" base_path: "/m" } }',
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow" } '
            'config { name: "a" base_path: "/n" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times in config list",
        ),
    ],
    ids=["not-a-text-proto", "relative-path", "other-platform", "no-platform", "duplicate-name"],
)
def test_a_malformed_config_file_stops_start_up_with_tf_servings_message(tmp_path, text, message):
    config_file = tmp_path / "models.config"
    config_file.write_text(text)
    with pytest.raises(InvalidArgument) as caught:
        runner_for(config_file).load()
    assert message.format(file=config_file) in caught.value.message


def test_a_label_in_the_first_config_needs_the_flag_as_in_tf_serving(tmp_path, base_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(base_path, 'version_labels { key: "stable" value: 2 }'))
    with pytest.raises(FailedPrecondition) as caught:
        runner_for(config_file).load()
    assert caught.value.message == (
        f"Request to assign label to version 2 of model {MODEL}, which is not currently available for inference"
    )
    runner = runner_for(config_file, allow_version_labels_for_unavailable_models=True)
    runner.load()
    assert runner.servable(MODEL, label="stable").version == 2


def test_start_up_reads_the_config_file_once(tmp_path, base_path, monkeypatch):
    """Building the server and loading it read the file once: a file replaced in between cannot leave the
    protocols disagreeing about which models exist."""
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(base_path))
    reads = []
    read_text = Path.read_text

    def counting_read_text(path, *args, **kwargs):
        if path == config_file:
            reads.append(path)
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    service = create_service(
        ViTSettings(model_config_file=config_file, poll_interval_s=0, checkpoint=None, threads=1)
    )
    service.runner.load()
    assert service.runner.available_versions() == {MODEL: [2]}
    assert len(reads) == 1


def test_an_empty_config_serves_no_model(tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text("# nothing to serve yet\n")
    runner = runner_for(config_file)
    runner.load()
    assert runner.available_versions() == {}


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the polled config never took effect"
        time.sleep(0.1)


def test_the_polled_config_file_is_applied_and_a_bad_one_keeps_the_last_good_config(tmp_path, base_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(base_path))
    settings = ViTSettings(
        model_config_file=config_file,
        model_config_file_poll_wait_seconds=0.2,
        poll_interval_s=0,
        checkpoint=None,
    )
    with ServerThread(lambda: [create_service(settings)], settings) as server:

        def predict(path: str) -> requests.Response:
            return requests.post(f"{server.rest_url}{path}:predict", json={"instances": [1.0]}, timeout=10)

        def available() -> set[str]:
            statuses = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10).json()
            return {s["version"] for s in statuses["model_version_status"] if s["state"] == "AVAILABLE"}

        assert available() == {"2"}  # the default policy
        config_file.write_text(config_text(base_path, "model_version_policy { all {} }"))
        _wait(lambda: available() == {"1", "2"})
        # A label can name version 1 now that it is loaded.
        labelled = "model_version_policy { all {} } version_labels { key: 'stable' value: 1 }"
        config_file.write_text(config_text(base_path, labelled))
        _wait(lambda: predict(f"/v1/models/{MODEL}/labels/stable").status_code == 200)
        assert predict(f"/v1/models/{MODEL}/labels/stable").json() == {"predictions": [2.0]}

        for bad in (
            "model_config_list { config {",
            config_text(base_path, "version_labels { key: 'stable' value: 9 }"),
            "model_config_list {}",  # empty: it would unload every model
        ):
            config_file.write_text(bad)
            time.sleep(1.0)  # five polls
            assert predict(f"/v1/models/{MODEL}/labels/stable").json() == {"predictions": [2.0]}
            assert available() == {"1", "2"}


def test_a_request_in_flight_completes_when_its_model_is_removed(tmp_path, base_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(base_path))
    # The batcher holds a lone request for up to 1.5 s, waiting for company: the reload lands meanwhile.
    settings = ViTSettings(
        model_config_file=config_file,
        poll_interval_s=0,
        checkpoint=None,
        max_wait_ms=1500,
        wait_when_idle=True,
        allow_reload=True,
    )
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        answers = []
        sender = threading.Thread(
            target=lambda: answers.append(
                requests.post(
                    f"{server.rest_url}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=30
                )
            )
        )
        sender.start()
        time.sleep(0.5)
        # Another model takes its place (a reload never empties the server).
        replacement = text_format.Parse(
            config_text(base_path, name="other"), model_server_config_pb2.ModelServerConfig()
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            response = stub.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=replacement), 30
            )
        assert response.status.error_code == 0
        sender.join(timeout=30)
        assert answers[0].status_code == 200 and answers[0].json() == {"predictions": [3.0]}
        after = requests.post(
            f"{server.rest_url}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=10
        )
        assert after.status_code == 404
        assert after.json() == {"error": f"Servable not found for request: Latest({MODEL})"}
        # The removed model's version is reported as ended, as TF Serving's state monitor keeps it.
        status = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10).json()
        assert status["model_version_status"] == [
            {"version": "2", "state": "END", "status": {"error_code": "OK", "error_message": ""}}
        ]
