"""Translation over the Open Inference Protocol, driven by Triton's own clients (HTTP and gRPC), unchanged."""

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from services.kit.testing import ServerThread
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

TEXTS = ["Hello world.", "How are you today?"]


@pytest.fixture(scope="module")
def server(models_dir):
    pairs = {p: str(models_dir / "translation" / f"wmt19-{p}") for p in ("en-de", "de-en")}
    settings = TranslationSettings(models=pairs, log_level="warning", default_max_new_tokens=16)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def rest_translation(server, **body) -> dict:
    response = httpx.post(server.rest_url + "/v1/translate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def texts_input(module):
    tensor = module.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode() for text in TEXTS], dtype=np.object_))
    return tensor


def test_metadata_tells_a_client_what_to_send(server):
    client = triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("translation")
    metadata = client.get_model_metadata("translation")
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in metadata["outputs"]] == ["translations", "alternatives", "model"]


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_translates_as_the_rest_route_does(server, module):
    target = server.rest_url.removeprefix("http://") if module is triton_http else server.grpc_target
    client = module.InferenceServerClient(target)
    result = client.infer(
        "translation", [texts_input(module)], parameters={"source_lang": "en", "target_lang": "de"}
    )
    expected = rest_translation(server, text=TEXTS, source_lang="en", target_lang="de")
    assert [text.decode() for text in result.as_numpy("translations")] == expected["translations"]
    assert result.as_numpy("model").tolist() == [b"wmt19-en-de"]


def test_beam_controls_as_parameters_give_alternatives(server):
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    parameters = {"source_lang": "en", "target_lang": "de", "num_beams": 4, "num_return_sequences": 2,
                  "max_new_tokens": 8}
    result = client.infer("translation", [texts_input(triton_grpc)], parameters=parameters)
    assert result.as_numpy("alternatives").shape == (2, 2)
    expected = rest_translation(server, text=TEXTS, **parameters)
    assert [[text.decode() for text in row] for row in result.as_numpy("alternatives")] == expected["alternatives"]


def test_service_limits_apply_as_on_rest(server):
    client = triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="num_beams"):
        client.infer("translation", [texts_input(triton_http)],
                     parameters={"source_lang": "en", "target_lang": "de", "num_beams": 1000})
    with pytest.raises(InferenceServerException, match="fr-de"):
        client.infer("translation", [texts_input(triton_http)], parameters={"source_lang": "fr", "target_lang": "de"})


def test_an_output_asked_for_by_name_that_this_request_does_not_produce_is_refused(server):
    client = triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"))
    outputs = [triton_http.InferRequestedOutput("alternatives")]
    with pytest.raises(InferenceServerException, match="alternatives"):
        client.infer("translation", [texts_input(triton_http)], outputs=outputs,
                     parameters={"source_lang": "en", "target_lang": "de"})
    outputs = [triton_http.InferRequestedOutput("translations")]
    result = client.infer("translation", [texts_input(triton_http)], outputs=outputs,
                          parameters={"source_lang": "en", "target_lang": "de"})
    assert result.as_numpy("model") is None and len(result.as_numpy("translations")) == 2
