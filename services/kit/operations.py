"""Operations declared once, bound to every transport.

An `Operation` says what a service does: its request model, how a request becomes a `Plan` (the checks against the
service's limits; the plan holds the runner's job and what the batcher reads of it: batch key, cost, bytes held),
the batcher that runs it, and how the runner's result becomes the response model. The kit binds it to a REST
route (FastAPI), a gRPC method of the service's proto and an Open Inference Protocol model, so validation,
admission, cancellation and error mapping are written once.

Where an answer is more than the response model (audio files, server-sent events, a stream of messages), each
binder takes an `answer(call)`: `call` is the prepared request (`Call`: its `plan`, `result()` or `events()`, the
transport's own request as `origin`) and the answer is what that transport sends: a Response, a message, OIP
outputs, or for streams an async iterator of them (see `streaming` for how their errors reach the client).
"""

import inspect
import time
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from fastapi import APIRouter, Request, Response
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
ResponseModel = TypeVar("ResponseModel")
# Extra form fields a multipart body may carry beyond the request model's, before the parser stops reading.
FORM_SLACK_FIELDS = 16


class Upload(BaseModel):
    """A file of a multipart form (REST), or the same bytes from another transport: a request model's field of
    this type is a file part of the route's form."""

    data: bytes
    filename: str | None = None


class Plan(Protocol):
    """A prepared request, as the kit reads it: the runner's `job`, and how the batcher treats it: requests of one
    `key` share a batch, `cost` counts against the batch's work budget, `nbytes` against the bytes held queued.
    A service's plan also keeps what its answer needs (the response format, say)."""

    @property
    def job(self) -> Any: ...

    @property
    def key(self) -> Hashable: ...

    @property
    def cost(self) -> float: ...

    @property
    def nbytes(self) -> int: ...


P = TypeVar("P", bound=Plan)


@dataclass(frozen=True)
class JobPlan:
    """The plain plan: a job and the batcher's reading of it, for services whose answer needs nothing else."""

    job: Any
    key: Hashable = None
    cost: float = 1.0
    nbytes: int = 0


@dataclass
class Operation(Generic[RequestModel, P, ResponseModel]):
    """One thing a service does, declared once. `prepare` and `respond` may be coroutine functions (or return
    awaitables): a prepare that decodes a file runs it off the event loop."""

    name: str
    request: type[RequestModel]
    response: type[ResponseModel] | None
    batcher: DynamicBatcher
    # Checks against the limits (InvalidArgument names the field) and makes the plan.
    prepare: Callable[[RequestModel], P | Awaitable[P]]
    # The runner's result for this plan -> the response; only for answers the kit renders (JSON, gRPC to_message).
    respond: Callable[[Any, P], ResponseModel | Awaitable[ResponseModel]] | None = None

    async def start(
        self,
        body: RequestModel,
        *,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
        origin: Any = None,
    ) -> "Call[P]":
        """The request prepared for the batcher: every check of `prepare` has run, nothing is queued yet."""
        received = time.perf_counter()
        plan = await _resolved(self.prepare(body))
        return Call(self, plan, timeout, disconnected, origin, received)

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
        form: "FormSpelling | bool" = False,
        read: Callable[[Request], Awaitable[RequestModel]] | None = None,
        body: type[BaseModel] | None = None,
        **route_options,
    ) -> None:
        """POST `path`. The body is the request model as JSON, or with `form` a multipart form: its text fields
        the model's fields, its files the model's `Upload` fields, any other part refused by name (`form` may be a
        `FormSpelling`: OpenAI's list and object spellings, the fields the route takes or refuses). `read(request)`
        replaces both for a body neither describes (JSON or a form on one route, a file part repeated): it returns
        the request; with `body`, the route's JSON body is that model (validated, and in OpenAPI, as a plain
        route's: OpenAI's spelling of the request, say) and `read(body)` makes the request from it. `answer(call)`
        makes the response (a streamed one through `streaming.rest_stream`); without it, the response model as
        JSON."""
        if answer is None:
            answer = self._json_answer
            route_options = dict(
                response_model=self.response, response_model_exclude_none=True, **route_options
            )
        request_model = self.request

        async def answered(body: RequestModel, request: Request):
            return await answer(await self.start(body, disconnected=request.is_disconnected, origin=request))

        if body is not None:

            async def endpoint(payload: body, request: Request):  # type: ignore[valid-type]
                return await answered(await read(payload), request)
        elif read is not None:

            async def endpoint(request: Request):
                return await answered(await read(request), request)
        elif form:
            spelling = PLAIN_FORM if form is True else form
            route_options.setdefault("openapi_extra", form_schema(request_model, spelling))

            async def endpoint(request: Request):
                return await answered(
                    parse(request_model, await read_form(request, request_model, spelling)), request
                )
        else:

            async def endpoint(body: request_model, request: Request):  # type: ignore[valid-type]
                return await answered(body, request)

        endpoint.__name__ = self.name
        router.add_api_route(path, endpoint, methods=["POST"], **route_options)

    async def _json_answer(self, call: "Call") -> Any:
        """The response model as JSON, encoded once by pydantic: FastAPI would validate the model it was just given
        again against `response_model`, then encode it through jsonable_encoder and json.dumps. Anything other than
        exactly the response model (a subclass with more fields, a dict) goes through FastAPI's filter as before."""
        response = await call.response()
        if type(response) is not self.response:
            return response
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

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

    async def _grpc_call(self, message, context, to_fields) -> "Call[P]":
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
        output_sizes: Callable[[P], dict[str, int]] | None = None,
    ) -> OipModel:
        """The operation as an OIP model. By default each input tensor fills the request field of its name
        (BYTES as UTF-8 text: one element a string, more a list), every other field of the request model is a
        request parameter of its type, and each output tensor comes from the response field of its name.

        `to_fields(request, streamed)` replaces that mapping (then `parameters` lists what the model honours);
        `answer(call)` makes the outputs instead of `to_outputs(response)`; `stream(call)` yields outputs part
        by part for ModelStreamInfer (errors framed as `streaming` describes). `call.origin` is the InferRequest
        (for its response_parameters, say). `output_sizes(plan)` bounds the response before compute: the most
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
            call = await self.start(
                body, timeout=request.timeout, disconnected=request.disconnected, origin=request
            )
            if output_sizes is not None:
                request.check_response_size(output_sizes(call.plan))
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
class Call(Generic[P]):
    """One prepared request of an operation on one transport: its plan, the caller's deadline and disconnect check,
    the transport's own request (`origin`: the starlette Request, the gRPC message, the InferRequest) and when it
    arrived (`received`, a perf_counter time)."""

    operation: Operation
    plan: P
    timeout: float | None = None
    disconnected: Disconnected | None = None
    origin: Any = None
    received: float = field(default_factory=time.perf_counter)

    def _submission(self) -> dict:
        plan = self.plan
        return dict(
            key=plan.key,
            timeout=self.timeout,
            disconnected=self.disconnected,
            cost=plan.cost,
            nbytes=plan.nbytes,
        )

    async def result(self) -> Any:
        """The runner's result (queued, batched, waited for)."""
        return await self.operation.batcher.submit(self.plan.job, **self._submission())

    async def response(self) -> Any:
        return await _resolved(self.operation.respond(await self.result(), self.plan))

    def events(self) -> AsyncIterator[Any]:
        """What the runner emits for this request as it emits it, then `Done(result)`. Queued at the first step:
        render it into messages and hand them to `streaming.started` (the transports' binders do), so that the
        batcher's refusal still answers with a status."""
        return self.operation.batcher.stream(self.plan.job, **self._submission())


async def _resolved(value):
    return await value if inspect.isawaitable(value) else value


# -- multipart forms -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormSpelling:
    """How a route's form spells its model's fields where a plain form cannot (OpenAI's SDK sends a list as
    `name[]=value`, one part per value, and an object as `name[member]=value`), which fields the route takes, and
    which it refuses with a reason. Every field the form sends is either read or refused by name."""

    lists: frozenset[str] = frozenset()  # name[]=value (or name=value), repeated
    objects: frozenset[str] = frozenset()  # name[member]=value
    # The text fields this route takes, any other refused by name (default: the model says, by its own `extra`
    # setting); the model's `Upload` fields are its files.
    fields: tuple[str, ...] | None = None
    # Fields this server does not take, each with why (and what to send instead).
    refused: typing.Mapping[str, str] = field(default_factory=dict)
    # For a `list[Upload]` field: the most files it takes (sent as name, name[] or name[i], once per file).
    max_files: typing.Mapping[str, int] = field(default_factory=dict)


PLAIN_FORM = FormSpelling()


def _upload_fields(model: type[BaseModel]) -> dict[str, bool]:
    """The model's file fields, each with whether it takes several files (`list[Upload]`)."""
    files = {}
    for name, info in model.model_fields.items():
        options = typing.get_args(info.annotation) or (info.annotation,)
        # list[Upload] first: its type arguments are (Upload,) too, as those of `Upload | None` hold Upload.
        if any(
            typing.get_origin(option) is list and typing.get_args(option) == (Upload,)
            for option in (info.annotation, *options)
        ):
            files[name] = True
        elif info.annotation is Upload or Upload in options:
            files[name] = False
    return files


def _text_fields(model: type[BaseModel], spelling: FormSpelling) -> tuple[str, ...]:
    files = _upload_fields(model)
    return tuple(name for name in spelling.fields or model.model_fields if name not in files)


async def read_form(
    request: Request, model: type[BaseModel], spelling: FormSpelling = PLAIN_FORM
) -> dict[str, Any]:
    """A multipart (or urlencoded) body as the model's fields: each text field once (lists and objects as the
    spelling says), files only where the model takes an `Upload`. The parser stops at a few more parts than the
    route takes, so a stray part is refused by its name, not read."""
    files = _upload_fields(model)
    texts = _text_fields(model, spelling)
    most_files = sum(spelling.max_files.get(name, 1) if several else 1 for name, several in files.items())
    limits = dict(
        max_files=most_files + 1, max_fields=len(texts) + FORM_SLACK_FIELDS + 4 * len(spelling.lists)
    )
    fields: dict[str, Any] = {}
    async with request.form(**limits) as form:
        for key, value in form.multi_items():
            name, member = _spelled(key)
            if name in spelling.refused:  # a file part too: the reason says what to send instead
                raise InvalidArgument(f"{key}: {spelling.refused[name]}", field=key)
            if isinstance(value, UploadFile):
                if name not in files:
                    taken = ", ".join(sorted(files)) or "none"
                    raise InvalidArgument(
                        f"{key}: unexpected file; this route takes files as: {taken}", field=key
                    )
                upload = Upload(data=await value.read(), filename=value.filename)
                if files[name]:
                    uploads = fields.setdefault(name, [])
                    if len(uploads) == spelling.max_files.get(name, 1):
                        raise InvalidArgument(
                            f"{name}: at most {len(uploads)} file(s) in one request", field=name
                        )
                    uploads.append(upload)
                    continue
                if member or name in fields:
                    raise InvalidArgument(f"{name}: given more than once; send exactly one file", field=name)
                fields[name] = upload
            elif name in files:
                raise InvalidArgument(f"{key}: upload a file (multipart/form-data), not text", field=key)
            elif name not in texts and spelling.fields is not None:  # else the model refuses (or takes) it
                taken = ", ".join([*files, *texts])
                raise InvalidArgument(
                    f"{key}: not a field of {request.url.path}; it takes {taken}", field=key
                )
            elif name in spelling.objects and member:
                if not (member.startswith("[") and member.endswith("]") and "[" not in member[1:]):
                    raise InvalidArgument(f"{key}: send {name}[field]=value", field=key)
                members = fields.setdefault(name, {})
                if not isinstance(members, dict) or member[1:-1] in members:
                    raise InvalidArgument(f"{key}: given more than once", field=key)
                members[member[1:-1]] = value
            elif name in spelling.lists:
                if member not in ("", "[]"):
                    raise InvalidArgument(
                        f"{key}: send the list as {name}[]=value, once per value", field=key
                    )
                fields.setdefault(name, []).append(value)
            elif member:
                raise InvalidArgument(f"{key}: {name} takes one value, not a list or object", field=key)
            elif name in fields:
                raise InvalidArgument(f"{name}: given more than once", field=name)
            else:
                fields[name] = value
    return fields


def _spelled(key: str) -> tuple[str, str]:
    """`name[member]` -> ("name", "[member]"); a plain name has no member."""
    name = key.split("[", 1)[0]
    return name, key[len(name) :]


def form_schema(model: type[BaseModel], spelling: FormSpelling = PLAIN_FORM) -> dict:
    """The multipart body as OpenAPI describes it: `Upload` fields as files, lists as `name[]` parts, objects and
    other structures as JSON text (a form has nothing else: the model parses them), the other fields as the model
    describes them."""
    files = _upload_fields(model)
    model_schema = model.model_json_schema(mode="validation")["properties"]
    properties = {}
    for name in files:
        binary = {"type": "string", "format": "binary"}
        properties[name] = {
            **({"type": "array", "items": binary} if files[name] else binary),
            **_description(model, name),
        }
    for name in _text_fields(model, spelling):
        schema = model_schema[name]
        if name in spelling.lists:
            properties[f"{name}[]"] = {**schema, **_description(model, name)}
            continue
        if _structured(schema) and name not in spelling.objects:
            schema = {"type": "string", "description": "JSON"}
        properties[name] = {**schema, **_description(model, name)}
    required = [
        name for name, info in model.model_fields.items() if info.is_required() and name in properties
    ]
    content: dict[str, Any] = {"schema": {"type": "object", "properties": properties, "required": required}}
    if spelling.lists:
        content["encoding"] = {
            f"{name}[]": {"explode": True} for name in spelling.lists if f"{name}[]" in properties
        }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": content}}}


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
