"""TF Serving's REST API, which no kit Operation can declare: model/version/label paths, bodies read by TF Serving's
JSON rules, answers in its shapes.

Model status, metadata, predict, classify and regress under /v1/models/<name>[/versions/<n> | /labels/<label>].
Paths and messages follow TF Serving's handler: a model name or label may not contain ':' or '/', a version
is digits, and anything else under /v1/models is a "Malformed request" (400).
"""

import asyncio
import re
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument

from . import schemas
from .examples import (
    Method,
    classification_json,
    classification_result,
    inference_job,
    json_examples,
    regression_json,
    regression_result,
)
from .limits import RequestLimits, TensorBudget, check_string_inputs
from .runner import ViTRunner
from .servables import DEFAULT_SIGNATURE, PredictJob, validate_inputs

_MODEL_NAME = re.compile(r"[^/:]+")
_VERSION = re.compile(r"\d+")
# Where tensorflow/serving exports Prometheus metrics with docker/vit/monitoring.config (what k8s scrapes).
MONITORING_PATH = "/monitoring/prometheus/metrics"


def _json(doc: dict) -> Response:
    return Response(schemas.dumps(doc), media_type="application/json")


@dataclass(frozen=True)
class Target:
    """The servable a path names: a model and a version, a label, or neither (its latest version)."""

    name: str
    version: int | None = None
    label: str | None = None


def _target(request: Request, model: str, version: str | None, label: str | None) -> Target:
    if (
        not _MODEL_NAME.fullmatch(model)
        or (version is not None and not _VERSION.fullmatch(version))
        or (label is not None and not _MODEL_NAME.fullmatch(label))
    ):
        raise InvalidArgument(f"Malformed request: {request.method} {request.url.path}")
    return Target(model, None if version is None else int(version), label)


def _add_routes(router: APIRouter, method: str, suffix: str, handler) -> None:
    """The latest-version, /versions/<v> and /labels/<label> forms of one endpoint."""

    async def latest(request: Request, model: str) -> Response:
        return await handler(request, _target(request, model, None, None))

    async def specific(request: Request, model: str, version: str) -> Response:
        return await handler(request, _target(request, model, version, None))

    async def labelled(request: Request, model: str, label: str) -> Response:
        return await handler(request, _target(request, model, None, label))

    router.add_api_route(f"/v1/models/{{model}}{suffix}", latest, methods=[method])
    router.add_api_route(f"/v1/models/{{model}}/versions/{{version}}{suffix}", specific, methods=[method])
    router.add_api_route(f"/v1/models/{{model}}/labels/{{label}}{suffix}", labelled, methods=[method])


def rest_router(
    runner: ViTRunner, batcher: DynamicBatcher, limits: RequestLimits, decoder: Executor
) -> APIRouter:
    """`decoder` parses bodies and builds tensors: megabytes of JSON would stall the event loop, and the
    model thread is kept for the model."""
    router = APIRouter(tags=["tensorflow-serving"])

    def find_servable(target: Target):
        return runner.servable(target.name, target.version, target.label)

    async def status(request: Request, target: Target) -> Response:
        # TF Serving's GetModelStatus ignores a label: /labels/<l> answers every version's status.
        states = runner.version_states(target.name, target.version)
        return _json(schemas.status_json(schemas.status_response(states)))

    async def metadata(request: Request, target: Target) -> Response:
        return _json(schemas.metadata_json(schemas.metadata_response(find_servable(target))))

    def prepare(body: bytes, target: Target) -> tuple[PredictJob, schemas.Format]:
        # TF Serving's order: parse the body, find the servable, then its signature, then the tensors.
        doc = schemas.parse_json(body, limits)
        signature_name = schemas.signature_name(doc) or DEFAULT_SIGNATURE
        servable = find_servable(target)
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

    async def predict(request: Request, target: Target) -> Response:
        loop = asyncio.get_running_loop()
        job, fmt = await loop.run_in_executor(decoder, prepare, await request.body(), target)
        outputs = await job.run_in(batcher, disconnected=request.is_disconnected)
        return await loop.run_in_executor(decoder, respond, outputs, fmt)

    def prepare_examples(body: bytes, target: Target, method: Method) -> PredictJob:
        # TF Serving's order: the whole body (signature name, context, examples), then the servable.
        doc = schemas.parse_json(body, limits)
        signature_name = schemas.signature_name(doc)
        examples = json_examples(doc, limits)
        return inference_job(find_servable(target), signature_name, method, examples)

    def respond_examples(outputs: dict[str, np.ndarray], rows: int, method: Method) -> Response:
        if method is Method.CLASSIFY:
            return _json(classification_json(classification_result(outputs, rows)))
        return _json(regression_json(regression_result(outputs, rows)))

    def inference(method: Method):
        async def handler(request: Request, target: Target) -> Response:
            loop = asyncio.get_running_loop()
            body = await request.body()
            job = await loop.run_in_executor(decoder, prepare_examples, body, target, method)
            outputs = await job.run_in(batcher, disconnected=request.is_disconnected)
            return await loop.run_in_executor(decoder, respond_examples, outputs, job.rows, method)

        return handler

    _add_routes(router, "GET", "", status)
    _add_routes(router, "GET", "/metadata", metadata)
    _add_routes(router, "POST", ":predict", predict)
    _add_routes(router, "POST", ":classify", inference(Method.CLASSIFY))
    _add_routes(router, "POST", ":regress", inference(Method.REGRESS))

    @router.api_route("/v1/models/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def malformed(request: Request, rest: str) -> Response:
        raise InvalidArgument(f"Malformed request: {request.method} {request.url.path}")

    @router.get(MONITORING_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
