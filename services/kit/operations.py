"""Operations declared once, bound to every transport.

An `Operation` says what a service does: its request model, how a request becomes the runner's job (the checks
against the service's limits), the job's batch key and cost, the batcher that runs it, and how the runner's result
becomes the response model. The kit binds it to a REST route (FastAPI), a gRPC method of the service's proto and
an Open Inference Protocol model, so validation, admission, cancellation and error mapping are written once.
"""

import types
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Request
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel

from .batcher import DynamicBatcher
from .grpc_server import time_remaining
from .oip import InferRequest, OipModel, Outputs, Parameter, Tensor
from .validation import parse

RequestModel = TypeVar("RequestModel", bound=BaseModel)
Job = TypeVar("Job")
ResponseModel = TypeVar("ResponseModel", bound=BaseModel)


@dataclass
class Operation(Generic[RequestModel, Job, ResponseModel]):
    name: str
    request: type[RequestModel]
    response: type[ResponseModel]
    batcher: DynamicBatcher
    prepare: Callable[[RequestModel], Job]  # checks against the limits; raises InvalidArgument naming the field
    respond: Callable[[Any, Job], ResponseModel]  # the runner's result for this job -> the response
    cost: Callable[[Job], float] = lambda job: 1.0
    key: Callable[[Job], Hashable] = lambda job: None
    nbytes: Callable[[Job], int] = lambda job: 0

    async def __call__(self, body: RequestModel, *, timeout: float | None = None, disconnected=None) -> ResponseModel:
        job = self.prepare(body)
        result = await self.batcher.submit(
            job, key=self.key(job), timeout=timeout, disconnected=disconnected, cost=self.cost(job),
            nbytes=self.nbytes(job),
        )
        return self.respond(result, job)

    # -- REST --------------------------------------------------------------------------------------------------

    def add_route(self, router: APIRouter, path: str, **route_options) -> None:
        """POST `path`: the request model as the JSON body, the response model as the answer."""
        request_model = self.request

        async def endpoint(body: request_model, request: Request):  # type: ignore[valid-type]
            return await self(body, disconnected=request.is_disconnected)

        endpoint.__name__ = self.name
        router.add_api_route(
            path, endpoint, methods=["POST"], response_model=self.response, response_model_exclude_none=True,
            **route_options,
        )

    # -- gRPC --------------------------------------------------------------------------------------------------

    def grpc_method(self, to_message: Callable[[ResponseModel], Any], to_fields: Callable[[Any], dict] | None = None):
        """A unary method for the service's generated servicer: message -> request model -> ... -> message.

        `to_fields` turns the request message into the request model's fields (default: the message's fields
        by their proto names, repeated fields as lists); the client's deadline bounds the wait.
        """
        to_fields = to_fields or _message_fields

        async def method(message, context):
            body = parse(self.request, to_fields(message))
            return to_message(await self(body, timeout=time_remaining(context)))

        method.__name__ = self.name
        return method

    # -- Open Inference Protocol -------------------------------------------------------------------------------

    def oip_model(
        self,
        name: str,
        inputs: list[Tensor],
        outputs: list[Tensor],
        *,
        to_outputs: Callable[[ResponseModel], Outputs] | None = None,
        platform: str = "pytorch",
    ) -> OipModel:
        """The operation as an OIP model: each input tensor fills the request field of its name (BYTES as UTF-8
        text: one element a string, more a list), every other field of the request model is a request
        parameter of its type; each output tensor comes from the response field of its name."""
        tensor_names = {tensor.name for tensor in inputs}
        parameters = [
            Parameter(field_name, _parameter_kind(info.annotation))
            for field_name, info in self.request.model_fields.items()
            if field_name not in tensor_names
        ]
        to_outputs = to_outputs or (lambda response: response.model_dump(exclude_none=True))

        async def infer(request: InferRequest) -> Outputs:
            fields: dict[str, Any] = dict(request.parameters)
            for tensor in inputs:
                if tensor.name in request.inputs:
                    fields[tensor.name] = _tensor_field(tensor, request)
            body = parse(self.request, fields)
            return to_outputs(await self(body, timeout=request.timeout, disconnected=request.disconnected))

        return OipModel(name, inputs, outputs, infer, parameters=parameters, platform=platform)


def _message_fields(message) -> dict:
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
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(
        annotation
    ) is typing.Union else (annotation,)
    for kind in (bool, int, float, str):
        if kind in options:
            return kind
    literal_values = [value for option in options if typing.get_origin(option) is typing.Literal
                      for value in typing.get_args(option)]
    if literal_values:
        return type(literal_values[0])
    raise TypeError(f"no OIP parameter type for {annotation!r}")
