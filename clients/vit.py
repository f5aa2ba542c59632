"""ViT image classification over the TensorFlow Serving protocol (REST :8501, gRPC :8500).

The exported model decodes images in-graph, so a request is just image bytes: REST sends each as
`{"b64": ...}` in `instances`, gRPC as a DT_STRING tensor through the `tensorflow-serving-api`
stubs. Those stubs import TensorFlow (seconds and hundreds of MB), so the gRPC client loads them
only when it is first used. The same client works against the official `tensorflow/serving` image.
"""

import base64
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .grpc_channel import GrpcCaller
from .media import Source, read_source
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport

DEFAULT_MODEL = "hf-vit"
INPUT = "string_input"
TOP_K_SIGNATURE = "top_k"


def _floats(tensor) -> list[float]:
    """A DT_FLOAT TensorProto's values: servers send them packed in tensor_content or as float_val."""
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype="<f4").tolist()
    return list(tensor.float_val)


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float


def _predict_path(model: str, version: int | None) -> str:
    return f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + ":predict"


def _instances(images: Sequence[Source], signature: str | None) -> dict:
    body = {
        "instances": [{"b64": base64.b64encode(read_source(image)[0]).decode("ascii")} for image in images]
    }
    return body | ({"signature_name": signature} if signature else {})


def _classifications(predictions: list[dict]) -> list[Classification]:
    return [Classification(p["label"], float(p["confidence"])) for p in predictions]


def _rankings(predictions: list[dict]) -> list[list[Classification]]:
    return [
        [Classification(label, float(s)) for label, s in zip(p["labels"], p["scores"], strict=True)]
        for p in predictions
    ]


class ViTClient:
    def __init__(self, transport: RestTransport, model: str = DEFAULT_MODEL):
        self.transport = transport
        self.model = model

    def classify(self, image: Source, *, version: int | None = None) -> Classification:
        return self.classify_many([image], version=version)[0]

    def classify_many(self, images: Sequence[Source], *, version: int | None = None) -> list[Classification]:
        """One request, one prediction per image (the server batches them with other requests too)."""
        return _classifications(self._predict(images, None, version))

    def top_k(self, image: Source, *, version: int | None = None) -> list[Classification]:
        """The k best labels with their scores (the `top_k` signature)."""
        return _rankings(self._predict([image], TOP_K_SIGNATURE, version))[0]

    def status(self) -> list[dict]:
        """TF Serving's model_version_status: version, state (AVAILABLE...) and status per version."""
        return self.transport.request("GET", f"/v1/models/{self.model}").json()["model_version_status"]

    def _predict(self, images: Sequence[Source], signature: str | None, version: int | None) -> list[dict]:
        response = self.transport.request(
            "POST", _predict_path(self.model, version), json=_instances(images, signature)
        )
        return response.json()["predictions"]


class AsyncViTClient:
    def __init__(self, transport: AsyncRestTransport, model: str = DEFAULT_MODEL):
        self.transport = transport
        self.model = model

    async def classify(self, image: Source, *, version: int | None = None) -> Classification:
        return (await self.classify_many([image], version=version))[0]

    async def classify_many(
        self, images: Sequence[Source], *, version: int | None = None
    ) -> list[Classification]:
        response = await self.transport.request(
            "POST", _predict_path(self.model, version), json=_instances(images, None)
        )
        return _classifications(response.json()["predictions"])

    async def top_k(self, image: Source, *, version: int | None = None) -> list[Classification]:
        response = await self.transport.request(
            "POST", _predict_path(self.model, version), json=_instances([image], TOP_K_SIGNATURE)
        )
        return _rankings(response.json()["predictions"])[0]


class ViTGrpcClient:
    """tensorflow.serving.PredictionService/Predict with the official stubs."""

    def __init__(self, caller: GrpcCaller, model: str = DEFAULT_MODEL):
        self.caller = caller
        self.model = model
        self._stub = None

    @property
    def stub(self):
        if self._stub is None:
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self.caller.channel)
        return self._stub

    def classify(
        self, image: Source, *, version: int | None = None, timeout: float | None = None
    ) -> Classification:
        return self.classify_many([image], version=version, timeout=timeout)[0]

    def classify_many(
        self, images: Sequence[Source], *, version: int | None = None, timeout: float | None = None
    ) -> list[Classification]:
        outputs = self._predict(images, "serving_default", version, timeout)
        labels = [label.decode() for label in outputs["label"].string_val]
        return [
            Classification(label, c) for label, c in zip(labels, _floats(outputs["confidence"]), strict=True)
        ]

    def top_k(
        self, image: Source, *, version: int | None = None, timeout: float | None = None
    ) -> list[Classification]:
        outputs = self._predict([image], TOP_K_SIGNATURE, version, timeout)
        labels = [label.decode() for label in outputs["labels"].string_val]
        return [Classification(label, s) for label, s in zip(labels, _floats(outputs["scores"]), strict=True)]

    def _predict(self, images: Sequence[Source], signature: str, version: int | None, timeout: float | None):
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        # Raw image bytes: the model's input is the encoded file, decoded in-graph.
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))]
            ),
            string_val=[read_source(image)[0] for image in images],
        )
        request.inputs[INPUT].CopyFrom(tensor)
        return self.caller.unary(self.stub.Predict, request, timeout=timeout).outputs


# The SDK shipped these classes as VitClient/AsyncVitClient/VitGrpcClient before the ViT spelling was
# made consistent; the old names still resolve so existing callers keep working, with a warning.
_DEPRECATED_NAMES = {"VitClient": ViTClient, "AsyncVitClient": AsyncViTClient, "VitGrpcClient": ViTGrpcClient}


def __getattr__(name: str):
    if name in _DEPRECATED_NAMES:
        replacement = _DEPRECATED_NAMES[name]
        warnings.warn(
            f"clients.vit.{name} is deprecated; use clients.vit.{replacement.__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return replacement
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SERVICE_CLIENTS = ServiceClients(
    attribute="vit",
    rest=ViTClient,
    async_rest=AsyncViTClient,
    grpc=ViTGrpcClient,
    own_ports=True,  # TensorFlow Serving's protocol on 8501/8500
)
