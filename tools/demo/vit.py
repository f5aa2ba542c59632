"""Demo: classify generated images on the TF Serving-compatible ViT server, over REST and gRPC.

The ViT server has its own ports (TF Serving's 8501/8500, or VIT_REST_PORT/VIT_GRPC_PORT), so the
platform's URLs are not used.
"""

import base64
import io
import json
import os
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = os.environ.get("VIT_MODEL_NAME", "hf-vit")


def _images() -> dict[str, bytes]:
    yy, xx = np.mgrid[0:180, 0:240]
    sunset = np.stack([200 + 55 * np.sin(xx / 40), 120 * yy / 180, 60 + 0 * xx], axis=-1)
    checker = ((xx // 20 + yy // 20) % 2)[..., None] * np.array([30, 160, 60]) + 40
    images = {}
    for name, pixels, fmt in (("sunset.jpg", sunset, "JPEG"), ("checker.png", checker, "PNG")):
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, fmt)
        images[name] = buffer.getvalue()
    return images


def wait_ready(rest: str, timeout: float = 300) -> None:
    """The platform's readiness does not cover this separate process (it may still be exporting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{rest}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the ViT server at {rest} was not ready after {timeout:.0f} s")


def run(rest_url: str, grpc_target: str, out_dir: Path) -> list[str]:
    rest = f"http://127.0.0.1:{os.environ.get('VIT_REST_PORT', '8501')}"
    target = f"127.0.0.1:{os.environ.get('VIT_GRPC_PORT', '8500')}"
    wait_ready(rest)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _images()
    results: dict = {"status": httpx.get(f"{rest}/v1/models/{MODEL}", timeout=30).json()}
    versions = [s["version"] for s in results["status"]["model_version_status"]]
    lines = [f"model {MODEL} versions {', '.join(versions)} on {rest} and {target}"]

    for name, data in images.items():
        (out_dir / name).write_bytes(data)
        # The Hugging Face blog's request: URL-safe base64 text in the row format.
        body = {"signature_name": "serving_default", "instances": [base64.urlsafe_b64encode(data).decode()]}
        response = httpx.post(f"{rest}/v1/models/{MODEL}:predict", json=body, timeout=60)
        response.raise_for_status()
        prediction = response.json()["predictions"][0]
        top = httpx.post(
            f"{rest}/v1/models/{MODEL}:predict",
            json={"signature_name": "top_k", "inputs": [{"b64": base64.b64encode(data).decode()}]},
            timeout=60,
        ).json()["outputs"]
        results[f"rest {name}"] = {"prediction": prediction, "top_k": top}
        lines.append(f"REST {name}: {prediction['label']} ({prediction['confidence']:.3f})")

    with grpc.insecure_channel(target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "serving_default"
        request.inputs["string_input"].CopyFrom(tf.make_tensor_proto(list(images.values())))
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 60.0)
    labels = [label.decode() for label in tf.make_ndarray(reply.outputs["label"])]
    confidences = tf.make_ndarray(reply.outputs["confidence"]).tolist()
    results["grpc"] = {
        "version": reply.model_spec.version.value,
        "labels": labels,
        "confidences": confidences,
    }
    lines.append(
        f"gRPC batch of {len(labels)} (version {reply.model_spec.version.value}): {', '.join(labels)}"
    )

    (out_dir / "predictions.json").write_text(json.dumps(results, indent=2))
    lines.append(
        "(the tiny ViT has random weights: labels are arbitrary; real checkpoints export the same way)"
    )
    return lines
