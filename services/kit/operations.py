"""Operations declared once, bound to every transport.

An `Operation` says what a service does: its request model, how a request becomes the runner's job (the checks
against the service's limits), the job's batch key and cost, the batcher that runs it, and how the runner's result
becomes the response model. The kit binds it to a REST route (FastAPI), a gRPC method of the service's proto and
an Open Inference Protocol model, so validation, admission, cancellation and error mapping are written once.

Where an answer is more than the response model (audio files, server-sent events, a stream of messages), each
binder takes an `answer(call)`: `call` is the prepared request (`Call`: its job, `result()` or `events()`, the
transport's own request as `origin`) and the answer is what that transport sends: a Response, a message, OIP
outputs, or for streams an async iterator of them (see `streaming` for how their errors reach the client).
"""

import inspect
import time
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Request
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from .batcher import Disconnected, DynamicBatcher
from .errors import InvalidArgument
from .grpc_server import time_remaining
from .oip import InferRequest, OipModel, Outputs, Parameter, Tensor
from .streaming import started
from .validation import parse

RequestModel = TypeVar("RequestModel", bound=BaseModel)
Job = TypeVar("Job")
ResponseModel = TypeVar("ResponseModel")
# Extra form fields a multipart body may carry beyond the request model's, before the parser stops reading.
FORM_SLACK_FIELDS = 16


class Upload(BaseModel):
    """A file of a multipart form (REST), or the same bytes from another transport: a request model's field of
    this type is a file part of the route's form."""

    data: bytes
    filename: str | None = None


@dataclass
class Operation(Generic[RequestModel, Job, ResponseModel]):
    """One thing a service does, declared once. `prepare` and `respond` may be coroutine functions (or return
    awaitables): a prepare that decodes a file runs it off the event loop."""

    name: str
    request: type[RequestModel]
    response: type[ResponseModel] | None
    batcher: DynamicBatcher
    # Checks against the limits (InvalidArgument names the field) and makes the job.
    prepare: Callable[[RequestModel], Job | Awaitable[Job]]
    # The runner's result for this job -> the response; only for answers the kit renders (JSON, gRPC to_message).
    respond: Callable[[Any, Job], ResponseModel | Awaitable[ResponseModel]] | None = None
    cost: Callable[[Job], float] = lambda job: 1.0
    key: Callable[[Job], Hashable] = lambda job: None
    nbytes: Callable[[Job], int] = lambda job: 0
    payload: Callable[[Job], Any] = lambda job: job  # what the runner gets (a plan's job, say)

    async def start(
        self,
        body: RequestModel,
        *,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
        origin: Any = None,
    ) -> "Call[Job]":
        """The request prepared for the batcher: every check of `prepare` has run, nothing is queued yet."""
        received = time.perf_counter()
        job = await _resolved(self.prepare(body))
        return Call(self, job, timeout, disconnected, origin, received)

    async def __call__(
        self, body: RequestModel, *, timeout: float | None = None, disconnected=None
    ) -> ResponseModel:
        return await (await self.start(body, timeout=timeout, disconnected=disconnected)).response()

    # -- REST --------------------------------------------------------------------------------------------------

    def add_route(
        self,
        router: APIRouter,
        path: str,
        *,
        answer: Callable[["Call"], Awaitable[Any]] | None = None,
        form: bool = False,
        read: Callable[[Request], Awaitable[RequestModel]] | None = None,
        **route_options,
    ) -> None:
        """POST `path`. The body is the request model as JSON, or with `form` a multipart form: its text fields
        the model's fields, its files the model's `Upload` fields, any other part refused by name. `read(request)`
        replaces both for a body neither describes (JSON or a form on one route, a file part repeated): it returns
        the request. `answer(call)` makes the response (a streamed one through `streaming.rest_stream`); without
        it, the response model as JSON."""
        if answer is None:
            answer = Call.response
            route_options = dict(
                response_model=self.response, response_model_exclude_none=True, **route_options
            )
        request_model = self.request

        async def answered(body: RequestModel, request: Request):
            return await answer(await self.start(body, disconnected=request.is_disconnected, origin=request))

        if read is not None:

            async def endpoint(request: Request):
                return await answered(await read(request), request)
        elif form:
            route_options.setdefault("openapi_extra", form_schema(request_model))

            async def endpoint(request: Request):
                return await answered(parse(request_model, await read_form(request, request_model)), request)
        else:

            async def endpoint(body: request_model, request: Request):  # type: ignore[valid-type]
                return await answered(body, request)

        endpoint.__name__ = self.name
        router.add_api_route(path, endpoint, methods=["POST"], **route_options)

    # -- gRPC --------------------------------------------------------------------------------------------------

    def grpc_method(
        self,
        to_message: Callable[[ResponseModel], Any] | None = None,
        to_fields: Callable[[Any], dict] | None = None,
        *,
        answer: Callable[["Call"], Awaitable[Any]] | None = None,
    ):
        """A unary method for the service's generated servicer: message -> request model -> ... -> message.

        `to_fields` turns the request message into the request model's fields (default: `message_fields`); it
        may be a coroutine function (a client stream's is read there: `message` is then the request iterator).
        The client's deadline bounds the wait. The reply is `to_message(response)`, or `answer(call)`'s message.
        """
        if answer is None:

            async def answer(call: Call) -> Any:
                return to_message(await call.response())

        async def method(message, context):
            return await answer(await self._grpc_call(message, context, to_fields))

        method.__name__ = self.name
        return method

    def grpc_stream(
        self, answer: Callable[["Call"], AsyncIterator[Any]], to_fields: Callable[[Any], dict] | None = None
    ):
        """A server-streaming method: `answer(call)` yields the messages. A refusal before the first answers with
        its status and no message; a failure after it, with its status after the messages sent."""

        async def method(message, context):
            call = await self._grpc_call(message, context, to_fields)
            async for reply in await started(answer(call)):
                yield reply

        method.__name__ = self.name
        return method

    async def _grpc_call(self, message, context, to_fields) -> "Call[Job]":
        body = parse(self.request, await _resolved((to_fields or message_fields)(message)))
        return await self.start(body, timeout=time_remaining(context), origin=message)

    # -- Open Inference Protocol -------------------------------------------------------------------------------

    def oip_model(
        self,
        name: str,
        inputs: list[Tensor],
        outputs: list[Tensor],
        *,
        to_outputs: Callable[[ResponseModel], Outputs] | None = None,
        to_fields: Callable[[InferRequest, bool], dict] | None = None,
        parameters: list[Parameter] | None = None,
        answer: Callable[["Call"], Awaitable[Outputs]] | None = None,
        stream: Callable[["Call"], AsyncIterator[Outputs]] | None = None,
        platform: str = "pytorch",
        output_sizes: Callable[[Job], dict[str, int]] | None = None,
    ) -> OipModel:
        """The operation as an OIP model. By default each input tensor fills the request field of its name
        (BYTES as UTF-8 text: one element a string, more a list), every other field of the request model is a
        request parameter of its type, and each output tensor comes from the response field of its name.

        `to_fields(request, streamed)` replaces that mapping (then `parameters` lists what the model honours);
        `answer(call)` makes the outputs instead of `to_outputs(response)`; `stream(call)` yields outputs part
        by part for ModelStreamInfer (errors framed as `streaming` describes). `call.origin` is the InferRequest
        (for its response_parameters, say). `output_sizes(job)` bounds the response before compute: the most
        elements each output whose size the request controls may hold (bytes, for BYTES outputs)."""
        tensor_names = {tensor.name for tensor in inputs}
        if parameters is None:
            parameters = [
                Parameter(field_name, _parameter_kind(info.annotation))
                for field_name, info in self.request.model_fields.items()
                if field_name not in tensor_names
            ]
        if to_fields is None:

            def to_fields(request: InferRequest, streamed: bool) -> dict:
                fields: dict[str, Any] = dict(request.parameters)
                for tensor in inputs:
                    if tensor.name in request.inputs:
                        fields[tensor.name] = _tensor_field(tensor, request)
                return fields

        if answer is None:
            to_outputs = to_outputs or (lambda response: response.model_dump(exclude_none=True))

            async def answer(call: Call) -> Outputs:
                return to_outputs(await call.response())

        async def start(request: InferRequest, streamed: bool) -> Call:
            body = parse(self.request, to_fields(request, streamed))
            call = await self.start(body, timeout=request.timeout, disconnected=request.disconnected, origin=request)
            if output_sizes is not None:
                request.check_response_size(output_sizes(call.job))
            return call

        async def infer(request: InferRequest) -> Outputs:
            return await answer(await start(request, False))

        async def by_part(request: InferRequest) -> AsyncIterator[Outputs]:
            async for produced in await started(stream(await start(request, True))):
                yield produced

        return OipModel(
            name,
            inputs,
            outputs,
            infer,
            parameters=parameters,
            stream=by_part if stream else None,
            platform=platform,
            batcher=self.batcher,
        )


@dataclass
class Call(Generic[Job]):
    """One prepared request of an operation on one transport: its job, the caller's deadline and disconnect check,
    the transport's own request (`origin`: the starlette Request, the gRPC message, the InferRequest) and when it
    arrived (`received`, a perf_counter time)."""

    operation: Operation
    job: Job
    timeout: float | None = None
    disconnected: Disconnected | None = None
    origin: Any = None
    received: float = field(default_factory=time.perf_counter)

    def _submission(self) -> dict:
        operation, job = self.operation, self.job
        return dict(
            key=operation.key(job),
            timeout=self.timeout,
            disconnected=self.disconnected,
            cost=operation.cost(job),
            nbytes=operation.nbytes(job),
        )

    async def result(self) -> Any:
        """The runner's result (queued, batched, waited for)."""
        return await self.operation.batcher.submit(self.operation.payload(self.job), **self._submission())

    async def response(self) -> Any:
        return await _resolved(self.operation.respond(await self.result(), self.job))

    def events(self) -> AsyncIterator[Any]:
        """What the runner emits for this request as it emits it, then `Done(result)`. Queued at the first step:
        render it into messages and hand them to `streaming.started` (the transports' binders do), so that the
        batcher's refusal still answers with a status."""
        return self.operation.batcher.stream(self.operation.payload(self.job), **self._submission())


async def _resolved(value):
    return await value if inspect.isawaitable(value) else value


# -- multipart forms -----------------------------------------------------------------------------------------------


def _upload_fields(model: type[BaseModel]) -> set[str]:
    return {
        name
        for name, info in model.model_fields.items()
        if info.annotation is Upload or Upload in typing.get_args(info.annotation)
    }


async def read_form(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    """A multipart (or urlencoded) body as the model's fields: each part once, files only where the model takes an
    `Upload`. The parser stops at a few more parts than the model has fields."""
    uploads = _upload_fields(model)
    fields: dict[str, Any] = {}
    # One file more than the model takes, so that a stray one is refused by its name.
    limits = dict(max_files=len(uploads) + 1, max_fields=len(model.model_fields) + FORM_SLACK_FIELDS)
    async with request.form(**limits) as form:
        for key, value in form.multi_items():
            if key in fields:
                raise InvalidArgument(f"{key}: given more than once", field=key)
            if isinstance(value, UploadFile):
                if key not in uploads:
                    raise InvalidArgument(
                        f"{key}: unexpected file; this route takes files as: "
                        f"{', '.join(sorted(uploads)) or 'none'}",
                        field=key,
                    )
                fields[key] = Upload(data=await value.read(), filename=value.filename)
            elif key in uploads:
                raise InvalidArgument(f"{key}: upload a file (multipart/form-data), not text", field=key)
            else:
                fields[key] = value
    return fields


def form_schema(model: type[BaseModel]) -> dict:
    """The multipart body as OpenAPI describes it: `Upload` fields as files, lists and objects as text (a form has
    nothing else: the model parses them, as JSON say), the other fields as the model describes them."""
    uploads = _upload_fields(model)
    properties = {}
    for name, schema in model.model_json_schema(mode="validation")["properties"].items():
        if name in uploads:
            schema = {"type": "string", "format": "binary"}
        elif _structured(schema):
            schema = {"type": "string", "description": "JSON"}
        properties[name] = {**schema, **_description(model, name)}
    required = [name for name, info in model.model_fields.items() if info.is_required()]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }


def _structured(schema: dict) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") in ("array", "object") or "$ref" in option for option in options)


def _description(model: type[BaseModel], name: str) -> dict:
    description = model.model_fields[name].description
    return {"description": description} if description else {}


def message_fields(message) -> dict:
    """A message's set fields by their proto names (proto3's empty values count as unset), repeated scalars as lists."""
    fields = MessageToDict(message, preserving_proto_field_name=True)
    for descriptor in message.DESCRIPTOR.fields:
        if descriptor.is_repeated and descriptor.message_type is None:
            fields[descriptor.name] = list(getattr(message, descriptor.name))
    return fields


def _tensor_field(tensor: Tensor, request: InferRequest) -> Any:
    if tensor.datatype == "BYTES":
        texts = request.text_input(tensor.name) or []
        return texts[0] if len(texts) == 1 else texts
    values = request.inputs[tensor.name].reshape(-1).tolist()
    return values[0] if len(values) == 1 else values


def _parameter_kind(annotation: Any) -> type:
    """The JSON type a parameter travels as: bool, int, float or str (from a field's annotation, None removed)."""
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for kind in (bool, int, float, str):
        if kind in options:
            return kind
    literal_values = [
        value
        for option in options
        if typing.get_origin(option) is typing.Literal
        for value in typing.get_args(option)
    ]
    if literal_values:
        return type(literal_values[0])
    raise TypeError(f"no OIP parameter type for {annotation!r}")
