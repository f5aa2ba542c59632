"""TF Serving's gRPC API with its own generated stubs (tensorflow-serving-api): PredictionService
Predict and GetModelMetadata, ModelService GetModelStatus. Same runner and batcher as REST."""

import asyncio
from concurrent.futures import Executor

import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument
from services.kit.grpc_server import time_remaining

from . import schemas
from .limits import (
    RequestLimits,
    TensorBudget,
    check_string_inputs,
    check_tensor_proto,
    proto_dtype,
    proto_shape,
)
from .runner import (
    DEFAULT_SIGNATURE,
    PredictJob,
    Servable,
    VitRunner,
    validate_declared,
    validate_output_filter,
)

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


def _servable(runner: VitRunner, spec: model_pb2.ModelSpec) -> Servable:
    if spec.WhichOneof("version_choice") == "version_label":
        raise InvalidArgument(f"Unrecognized servable version label: {spec.version_label}")
    return runner.servable(spec.name, spec.version.value if spec.HasField("version") else None)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`decoder` checks and converts the request's tensors and builds the response's, off the event loop."""

    def __init__(self, runner: VitRunner, batcher: DynamicBatcher, limits: RequestLimits, decoder: Executor):
        self.runner = runner
        self.batcher = batcher
        self.limits = limits
        self.decoder = decoder

    def _prepare(self, request: predict_pb2.PredictRequest) -> PredictJob:
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        servable = _servable(self.runner, request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise schemas.FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        # Everything a tensor would cost is read from its declaration before any tensor is built.
        validate_declared(
            signature,
            {key: (proto_dtype(key, proto), proto_shape(key, proto)) for key, proto in request.inputs.items()},
        )
        budget = TensorBudget(self.limits)
        inputs = {}
        for key, proto in sorted(request.inputs.items()):
            check_tensor_proto(key, proto, budget)
            try:
                inputs[key] = tf.make_ndarray(proto)
            except (TypeError, ValueError):
                raise InvalidArgument(f"tensor parsing error: {key}") from None
        output_filter = validate_output_filter(signature, list(request.output_filter))
        job = PredictJob(servable, signature, inputs, output_filter)
        budget.check_rows(job.rows, "the request")
        check_string_inputs(inputs, self.limits)
        return job

    @staticmethod
    def _response(job: PredictJob, outputs) -> predict_pb2.PredictResponse:
        servable = job.servable
        response = predict_pb2.PredictResponse(
            model_spec=schemas.model_spec(servable.name, servable.version, job.signature.name)
        )
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(schemas.tensor_proto(value))
        return response

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(self.decoder, self._prepare, request)
        outputs = await self.batcher.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=job.cost, nbytes=job.nbytes
        )
        return await loop.run_in_executor(self.decoder, self._response, job, outputs)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        if not request.metadata_field:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != schemas.SIGNATURE_DEF_FIELD:
                raise InvalidArgument(f"Metadata field {field} is not supported")
        return schemas.metadata_response(_servable(self.runner, request.model_spec))

    async def Classify(self, request, context):
        raise schemas.Unimplemented("Classify is not supported by this server; use Predict")

    async def Regress(self, request, context):
        raise schemas.Unimplemented("Regress is not supported by this server; use Predict")

    async def MultiInference(self, request, context):
        raise schemas.Unimplemented("MultiInference is not supported by this server; use Predict")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, runner: VitRunner):
        self.runner = runner

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        return schemas.status_response(self.runner.version_states(spec.name, version))

    async def HandleReloadConfigRequest(self, request, context):
        raise schemas.Unimplemented(
            "model config reloads are not supported: new versions are picked up by polling"
        )
