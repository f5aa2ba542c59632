"""TF Serving's gRPC API on its own generated stubs (tensorflow-serving-api), which no kit Operation can bind:
ModelSpec routing, TensorProto inputs and tf.Example lists.

PredictionService Predict, Classify, Regress and GetModelMetadata, ModelService GetModelStatus and
HandleReloadConfigRequest; same runner and batcher as REST.
"""

import asyncio
from concurrent.futures import Executor
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from services.kit.auth import ApiKeys
from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument
from services.kit.grpc_server import time_remaining
from services.kit.service import GrpcServicer

from . import schemas
from .errors import FailedPrecondition, PermissionDenied, Unimplemented
from .examples import (
    Method,
    classification_result,
    inference_job,
    inference_signature,
    input_examples,
    regression_result,
)
from .limits import (
    RequestLimits,
    TensorBudget,
    check_string_inputs,
    check_tensor_proto,
    proto_dtype,
    proto_shape,
)
from .model_config import MODEL_CONFIG_LIST, check_reload, directory_of, model_entries, read_config_file
from .runner import MAX_CONFIG_FILE_BYTES, ViTRunner
from .servables import DEFAULT_SIGNATURE, PredictJob, Servable, validate_declared, validate_output_filter

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


def _servable(runner: ViTRunner, spec: model_pb2.ModelSpec) -> Servable:
    """ServerCore::ServableRequestFromModelSpec: a version, a label, or neither (the latest)."""
    if not spec.name:
        raise InvalidArgument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        return runner.servable(spec.name, label=spec.version_label)
    return runner.servable(spec.name, spec.version.value if choice == "version" else None)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`decoder` checks and converts the request's tensors and builds the response's, off the event loop."""

    def __init__(self, runner: ViTRunner, batcher: DynamicBatcher, limits: RequestLimits, decoder: Executor):
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
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        # Everything a tensor would cost is read from its declaration before any tensor is built.
        validate_declared(
            signature,
            {
                key: (proto_dtype(key, proto), proto_shape(key, proto))
                for key, proto in request.inputs.items()
            },
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
        outputs = await job.run_in(self.batcher, timeout=time_remaining(context))
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

    def _prepare_examples(self, request, method: Method) -> PredictJob:
        # TF Serving's order: the servable, its signature, then the examples (bounded before serialization).
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        servable = _servable(self.runner, request.model_spec)
        signature_name = request.model_spec.signature_name
        inference_signature(servable, signature_name, method)
        return inference_job(servable, signature_name, method, input_examples(request.input, self.limits))

    async def _infer(self, request, context, method: Method):
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(self.decoder, self._prepare_examples, request, method)
        outputs = await job.run_in(self.batcher, timeout=time_remaining(context))
        post_process = classification_result if method is Method.CLASSIFY else regression_result
        result = await loop.run_in_executor(self.decoder, post_process, outputs, job.rows)
        spec = schemas.model_spec(job.servable.name, job.servable.version, job.signature.name)
        return spec, result

    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context
    ) -> classification_pb2.ClassificationResponse:
        spec, result = await self._infer(request, context, Method.CLASSIFY)
        return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

    async def Regress(
        self, request: regression_pb2.RegressionRequest, context
    ) -> regression_pb2.RegressionResponse:
        spec, result = await self._infer(request, context, Method.REGRESS)
        return regression_pb2.RegressionResponse(model_spec=spec, result=result)

    async def MultiInference(self, request, context):
        raise Unimplemented(
            "MultiInference is not supported by this server; use Classify, Regress or Predict"
        )


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus is read-only and open to every caller the keys admit; HandleReloadConfigRequest is an
    admin operation: off unless VIT_ALLOW_RELOAD, then for admin keys only (when any keys are configured)."""

    def __init__(self, runner: ViTRunner, api_keys: ApiKeys | None = None):
        self.runner = runner
        self.api_keys = api_keys or ApiKeys.from_env()

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise InvalidArgument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        return schemas.status_response(self.runner.version_states(spec.name, version))

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context
    ) -> model_management_pb2.ReloadConfigResponse:
        """Swap in a new ModelServerConfig; answers once new models are loaded (or failed to load)."""
        self._check_admin(context)
        if request.config.WhichOneof("config") != MODEL_CONFIG_LIST:
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                "currently supported"
            )
        # Checked whole before anything is swapped: a refused config leaves what is served as it is.
        check_reload(model_entries(request.config, self.runner.settings.max_models), self._model_root())
        # Loading SavedModels takes seconds: off the event loop, which keeps answering requests meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.runner.reload, request.config)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # error_code OK, error_message ""
        return response

    def _check_admin(self, context) -> None:
        if not self.runner.settings.allow_reload:
            raise Unimplemented(
                "HandleReloadConfigRequest is off on this server (VIT_ALLOW_RELOAD=true enables it)"
            )
        if not self.api_keys.admin_required:
            return
        values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        if len(values) != 1 or not self.api_keys.allows_admin(values[0]):
            raise PermissionDenied(
                "HandleReloadConfigRequest needs an admin key (MODELSERVE_ADMIN_KEYS or MODELSERVE_ADMIN_KEYS_FILE) "
                "in metadata 'authorization: Bearer <key>'"
            )

    def _model_root(self) -> Path:
        settings = self.runner.settings
        if settings.model_root is not None:
            return settings.model_root
        if settings.model_config_file is None:
            return Path(settings.model_base)
        startup = read_config_file(settings.model_config_file, MAX_CONFIG_FILE_BYTES)
        return directory_of(model_entries(startup, settings.max_models))


def grpc_servicers(
    runner: ViTRunner, batcher: DynamicBatcher, limits: RequestLimits, decoder: Executor
) -> list[GrpcServicer]:
    """TF Serving's two gRPC services, for the kit's server."""
    return [
        GrpcServicer(
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
            PredictionServicer(runner, batcher, limits, decoder),
            PREDICTION_SERVICE,
        ),
        GrpcServicer(
            model_service_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(runner), MODEL_SERVICE
        ),
    ]
