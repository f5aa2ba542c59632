"""TF Serving's REST API: model status, metadata and predict under /v1/models/<name>[/versions/<n>].

Paths and messages follow TF Serving's handler: a model name may not contain ':' or '/', a version is
digits, and anything else under /v1/models is a "Malformed request" (400).
"""

import asyncio
import re
from concurrent.futures import Executor

import numpy as np
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument

from . import schemas
from .limits import RequestLimits, TensorBudget, check_string_inputs
from .runner import DEFAULT_SIGNATURE, PredictJob, VitRunner, validate_inputs

_MODEL_NAME = re.compile(r"[^/:]+")
_VERSION = re.compile(r"\d+")
# TF Serving's other prediction methods: they need tf.Example-based signatures this server does not run.
_CLASSIFY_OR_REGRESS = re.compile(r"/v1/models/[^/:]+(?:/versions/\d+)?:(classify|regress)")
# Where tensorflow/serving exports Prometheus metrics with docker/vit/monitoring.config (what k8s scrapes).
MONITORING_PATH = "/monitoring/prometheus/metrics"


def _json(doc: dict) -> Response:
    return Response(schemas.dumps(doc), media_type="application/json")


def _model_and_version(request: Request, model: str, version: str | None) -> tuple[str, int | None]:
    if not _MODEL_NAME.fullmatch(model) or (version is not None and not _VERSION.fullmatch(version)):
        raise InvalidArgument(f"Malformed request: {request.method} {request.url.path}")
    return model, None if version is None else int(version)


def _add_routes(router: APIRouter, method: str, suffix: str, handler) -> None:
    """The latest-version and the /versions/<v> form of one endpoint."""

    async def latest(request: Request, model: str) -> Response:
        return await handler(request, model)

    async def specific(request: Request, model: str, version: str) -> Response:
        return await handler(request, model, version)

    router.add_api_route(f"/v1/models/{{model}}{suffix}", latest, methods=[method])
    router.add_api_route(f"/v1/models/{{model}}/versions/{{version}}{suffix}", specific, methods=[method])


def create_router(
    runner: VitRunner, batcher: DynamicBatcher, limits: RequestLimits, decoder: Executor
) -> APIRouter:
    """`decoder` parses bodies and builds tensors: megabytes of JSON would stall the event loop, and the
    model thread is kept for the model."""
    router = APIRouter(tags=["tensorflow-serving"])

    async def status(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        return _json(schemas.status_json(schemas.status_response(runner.version_states(name, number))))

    async def metadata(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        return _json(schemas.metadata_json(schemas.metadata_response(runner.servable(name, number))))

    def prepare(body: bytes, name: str, number: int | None) -> tuple[PredictJob, schemas.Format]:
        # TF Serving's order: parse the body, find the servable, then its signature, then the tensors.
        doc = schemas.parse_json(body, limits)
        signature_name = schemas.signature_name(doc) or DEFAULT_SIGNATURE
        servable = runner.servable(name, number)
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise InvalidArgument(f'Serving signature name: "{signature_name}" not found in signature def')
        budget = TensorBudget(limits)
        fmt, inputs = schemas.decode_predict_inputs(doc, signature.inputs, budget)
        validate_inputs(signature, inputs)
        job = PredictJob(servable, signature, inputs)
        budget.check_rows(job.rows, "the request")
        check_string_inputs(inputs, limits)
        return job, fmt

    def respond(outputs: dict[str, np.ndarray], fmt: schemas.Format) -> Response:
        return _json(schemas.encode_predict_outputs(outputs, fmt))

    async def predict(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        loop = asyncio.get_running_loop()
        job, fmt = await loop.run_in_executor(decoder, prepare, await request.body(), name, number)
        outputs = await batcher.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=job.cost, nbytes=job.nbytes
        )
        return await loop.run_in_executor(decoder, respond, outputs, fmt)

    _add_routes(router, "GET", "", status)
    _add_routes(router, "GET", "/metadata", metadata)
    _add_routes(router, "POST", ":predict", predict)

    @router.api_route("/v1/models/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def malformed(request: Request, rest: str) -> Response:
        path = request.url.path
        if request.method == "POST" and (method := _CLASSIFY_OR_REGRESS.fullmatch(path)):
            raise schemas.Unimplemented(f"{method.group(1)} is not supported by this server; use :predict")
        raise InvalidArgument(f"Malformed request: {request.method} {path}")

    @router.get(MONITORING_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
