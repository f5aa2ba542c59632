"""TF Serving's REST API: model status, metadata and predict under /v1/models/<name>[/versions/<n>].

Paths and messages follow TF Serving's handler: a model name may not contain ':' or '/', a version is
digits, and anything else under /v1/models is a "Malformed request" (400).
"""

import re

from fastapi import APIRouter, Request, Response

from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument

from . import schemas
from .runner import DEFAULT_SIGNATURE, PredictJob, VitRunner, validate_inputs

_MODEL_NAME = re.compile(r"[^/:]+")
_VERSION = re.compile(r"\d+")
# TF Serving's other prediction methods: they need tf.Example-based signatures this server does not run.
_CLASSIFY_OR_REGRESS = re.compile(r"/v1/models/[^/:]+(?:/versions/\d+)?:(classify|regress)")


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


def create_router(runner: VitRunner, batcher: DynamicBatcher) -> APIRouter:
    router = APIRouter(tags=["tensorflow-serving"])

    async def status(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        return _json(schemas.status_json(schemas.status_response(runner.version_states(name, number))))

    async def metadata(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        return _json(schemas.metadata_json(schemas.metadata_response(runner.servable(name, number))))

    async def predict(request: Request, model: str, version: str | None = None) -> Response:
        name, number = _model_and_version(request, model, version)
        # TF Serving's order: parse the body, find the servable, then its signature, then the tensors.
        doc = schemas.parse_json(await request.body())
        signature_name = schemas.signature_name(doc) or DEFAULT_SIGNATURE
        servable = runner.servable(name, number)
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise InvalidArgument(f'Serving signature name: "{signature_name}" not found in signature def')
        fmt, inputs = schemas.decode_predict_inputs(doc, signature.inputs)
        validate_inputs(signature, inputs)
        job = PredictJob(servable, signature, inputs)
        outputs = await batcher.submit(job, key=job.batch_key, disconnected=request.is_disconnected)
        return _json(schemas.encode_predict_outputs(outputs, fmt))

    _add_routes(router, "GET", "", status)
    _add_routes(router, "GET", "/metadata", metadata)
    _add_routes(router, "POST", ":predict", predict)

    @router.api_route("/v1/models/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def malformed(request: Request, rest: str) -> Response:
        path = request.url.path
        if request.method == "POST" and (method := _CLASSIFY_OR_REGRESS.fullmatch(path)):
            raise schemas.Unimplemented(f"{method.group(1)} is not supported by this server; use :predict")
        raise InvalidArgument(f"Malformed request: {request.method} {path}")

    return router
