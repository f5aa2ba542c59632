"""The served TF Serving models over the Open Inference Protocol (v2), one OIP model per model of the config in
force: models come and go with a reload, which no kit Operation's single `oip_model` follows.

The kit serves them on the same ports, platform ``tensorflow_savedmodel``: input ``image``, BYTES ``[-1]``, a
batch of encoded images (raw bytes or base64 text, as the signature's string input takes them); outputs are
those of the version's ``serving_default`` signature under the signature's own names (the ViT export's
``label`` and ``confidence``). A request runs exactly what ``:predict`` runs: the same servable lookup, budget,
image-header checks and batcher, so both answer alike and share model calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

import tensorflow as tf

from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument, ServiceError
from services.kit.oip import InferRequest, OipModel, Outputs, Tensor

from .limits import RequestLimits, TensorBudget, check_string_inputs
from .runner import ViTRunner
from .servables import DEFAULT_SIGNATURE, PredictJob, Signature, validate_inputs, validate_output_filter

IMAGE = "image"
PLATFORM = "tensorflow_savedmodel"
DATATYPES = {
    tf.string: "BYTES",
    tf.bool: "BOOL",
    tf.uint8: "UINT8",
    tf.uint16: "UINT16",
    tf.uint32: "UINT32",
    tf.uint64: "UINT64",
    tf.int8: "INT8",
    tf.int16: "INT16",
    tf.int32: "INT32",
    tf.int64: "INT64",
    tf.float16: "FP16",
    tf.float32: "FP32",
    tf.float64: "FP64",
}


def _tensor(name: str, spec: tf.TensorSpec) -> Tensor | None:
    datatype = DATATYPES.get(spec.dtype)
    if datatype is None:
        return None
    shape = (
        (-1,)
        if spec.shape.rank is None
        else tuple(-1 if dim is None else dim for dim in spec.shape.as_list())
    )
    return Tensor(name, datatype, shape)


def signature_outputs(runner: ViTRunner, name: str) -> list[Tensor]:
    """The outputs of a model's serving signature in its latest loaded version, read whenever the kit asks:
    versions load after the OIP models are declared and a new version may change them. Outputs of a dtype the
    protocol has no datatype for (bfloat16, complex) are left out."""
    try:
        signature = runner.servable(name).signatures.get(DEFAULT_SIGNATURE)
    except ServiceError:
        return []
    if signature is None:
        return []
    tensors = (_tensor(output, spec) for output, spec in sorted(signature.outputs.items()))
    return [tensor for tensor in tensors if tensor is not None]


def _image_input(model: str, signature: Signature) -> str:
    """The alias of the signature's one string batch input, which the `image` tensor feeds."""
    if len(signature.inputs) == 1:
        ((alias, spec),) = signature.inputs.items()
        if spec.dtype == tf.string and spec.shape.is_compatible_with([None]):
            return alias
    takes = ", ".join(
        f"{alias}: {spec.dtype.name} {spec.shape}" for alias, spec in sorted(signature.inputs.items())
    )
    raise InvalidArgument(
        f"model '{model}': its {DEFAULT_SIGNATURE} signature takes {{{takes}}}, not one batch of encoded images, "
        "so it is not served over this protocol"
    )


def oip_models(
    runner: ViTRunner,
    batcher: DynamicBatcher,
    limits: RequestLimits,
    decoder: Executor,
) -> Callable[[], list[OipModel]]:
    """The kit's source of this server's OIP models: those of the config in force whenever it asks, so that a
    reload (the polled config file, HandleReloadConfigRequest) adds and removes them as it does for :predict."""
    # A request holds at most as many images as :predict admits, in elements and in rows.
    max_images = (
        limits.max_elements if limits.max_rows is None else min(limits.max_elements, int(limits.max_rows))
    )

    def model(name: str) -> OipModel:
        def prepare(request: InferRequest) -> PredictJob:
            # :predict's checks in its order, on the images the kit decoded (bounded by the declared shape).
            servable = runner.servable(name, int(request.version))
            signature = servable.signatures.get(DEFAULT_SIGNATURE)
            if signature is None:
                raise InvalidArgument(
                    f'Serving signature name: "{DEFAULT_SIGNATURE}" not found in signature def'
                )
            images = request.inputs[IMAGE]
            budget = TensorBudget(limits)
            budget.take_elements(IMAGE, list(images.shape))
            budget.take_string_bytes(IMAGE, sum(len(image) for image in images))
            inputs = {_image_input(name, signature): images}
            validate_inputs(signature, inputs)
            job = PredictJob(
                servable,
                signature,
                inputs,
                validate_output_filter(signature, list(request.requested_outputs)),
            )
            budget.check_rows(job.rows, "the request")
            check_string_inputs({IMAGE: images}, limits)
            return job

        async def infer(request: InferRequest) -> Outputs:
            job = await asyncio.get_running_loop().run_in_executor(decoder, prepare, request)
            return await job.run_in(batcher, timeout=request.timeout, disconnected=request.disconnected)

        def versions() -> list[str]:
            return [str(version) for version in runner.available_versions().get(name, [])]

        return OipModel(
            name,
            inputs=[Tensor(IMAGE, "BYTES", (-1,), max_elements=max_images)],
            outputs=partial(signature_outputs, runner, name),
            infer=infer,
            platform=PLATFORM,
            versions=versions,
            ready=lambda version: version in versions(),
            batcher=batcher,
        )

    built: dict[str, OipModel] = {}

    def served() -> list[OipModel]:
        nonlocal built
        names = runner.available_versions().keys()
        if names != built.keys():
            # Rebuilt and swapped whole, never mutated: request threads read it concurrently.
            built = {name: built.get(name) or model(name) for name in names}
        return list(built.values())

    return served
