"""The Open Inference Protocol (v2), the protocol Triton and KServe speak, over REST and gRPC for every service.

A service declares models (`OipModel`: named, typed tensors, the request parameters it honours, and the call that
serves one request); the kit serves /v2 and `inference.GRPCInferenceService` for all services of a process at once,
checks every declared shape and element count before any tensor data is converted, decodes JSON tensors, Triton's
binary-tensor extension and gRPC raw contents, and answers errors the way the protocol specifies
(REST `{"error": "..."}` with a 4xx/5xx status, gRPC status codes). Triton's model configuration and statistics
extensions describe each model (its tensors, its batcher) and what it has served, over both transports.
"""

import asyncio
import base64
import binascii
import json
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format

from protos import inference as pb

from . import logs
from .batcher import DynamicBatcher
from .errors import InvalidArgument, NotFound, PayloadTooLarge, ServiceError, UnsupportedMediaType
from .json_limits import JsonScanner
from .state import ServerState

SERVER_NAME = "modelserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration", "statistics"]
HEADER_LENGTH = "inference-header-content-length"
# JSON elements a request may hold besides its tensors' data: names, shapes, parameters.
JSON_OVERHEAD_ELEMENTS = 2_000
# Tensor values a JSON request body may hold, whatever the model takes: each becomes a Python object (~32 bytes,
# 8x a binary FP32) while parsing. Larger tensors travel in the binary extension (tritonclient's default).
MAX_JSON_TENSOR_VALUES = 1_000_000
# Inflated request bodies are checked a piece at a time, so a refused one is refused while it inflates.
INFLATE_PIECE_BYTES = 1 << 20
# The most bytes one element of each datatype takes in a JSON response (a float32 widens to a double's repr, a
# comma follows each); BYTES outputs are sized in bytes, which JSON's escapes may make 6 times longer.
JSON_WIDTHS = {
    "BOOL": 6, "UINT8": 4, "UINT16": 6, "UINT32": 11, "UINT64": 21, "INT8": 5, "INT16": 7, "INT32": 12,
    "INT64": 21, "FP16": 24, "FP32": 24, "FP64": 25,
}
JSON_ESCAPE_FACTOR = 6

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
# gRPC InferTensorContents field per datatype (FP16 and BF16 travel only as raw contents).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
# The tensor parameter declaring a BYTES input whose JSON data are base64 text (MLServer's content type).
BASE64_CONTENT_TYPE = "base64"
# Triton's stream parameters: the response parameter marking a request's last response, and the request parameter
# asking a streaming model's parts to go out at once, followed by an empty final response.
FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
# Triton's model-configuration names of the datatypes (TYPE_STRING is BYTES).
CONFIG_TYPES = {datatype: f"TYPE_{datatype}" for datatype in NUMPY_TYPES} | {"BYTES": "TYPE_STRING"}
# The durations of Triton's InferStatistics; no response cache here, so cache_hit and cache_miss stay zero.
STATISTIC_DURATIONS = (
    "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss",
)
# Triton's request parameters that a client sets itself: the protocol layer handles them, a model never sees them.
PROTOCOL_PARAMETERS = {"binary_data_output", "timeout", EMPTY_FINAL_RESPONSE}


@dataclass(frozen=True)
class Tensor:
    """A named, typed tensor of a model's metadata. -1 in `shape` is a dimension of any size; `max_elements`
    bounds the element count a request may declare, checked before its data is read."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    max_elements: int = 1
    optional: bool = False
    # BYTES holding encoded files (PNG, WAV: never UTF-8 text), which travel as raw bytes even in a JSON response.
    files: bool = False
    # A BYTES input of binary data (an encoded file): JSON strings cannot carry raw bytes, so a JSON request sends
    # each element as base64 text, which the kit decodes, never more than `max_bytes` decoded bytes an element
    # (checked from the text's length first). Binary tensor data and gRPC carry the raw bytes. The metadata says
    # so with the tensor parameter `content_type: base64` (MLServer's name for it).
    json_base64: bool = False
    max_bytes: int | None = None

    def metadata(self) -> dict:
        metadata = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.json_base64:
            metadata["parameters"] = {"content_type": BASE64_CONTENT_TYPE}
        return metadata


@dataclass(frozen=True)
class Parameter:
    """A request parameter a model honours (generation options and the like), with its JSON type."""

    name: str
    kind: type  # bool, int, float or str


@dataclass
class InferRequest:
    """One decoded inference request: inputs as numpy arrays (BYTES as object arrays of `bytes`)."""

    model: "OipModel"
    version: str
    id: str
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    timeout: float | None = None
    disconnected: Callable[[], Awaitable[bool]] | None = None
    # Parameters of the answer, e.g. the ones a model reports as not applied.
    response_parameters: dict[str, Any] = field(default_factory=dict)
    # The outputs the client named (empty: all the model produces); a model may refuse or skip work by them.
    requested_outputs: tuple[str, ...] = ()
    # The response's bound on this transport, and the outputs it would send as JSON text (the rest as raw bytes).
    max_response_bytes: int | None = None
    json_outputs: frozenset[str] = frozenset()

    def check_response_size(self, sizes: dict[str, int], setting: str = "max_response_bytes") -> None:
        """Refuses, before any compute, a request whose response could exceed the transport's bound. `sizes`: the
        most elements each output may hold, or for BYTES outputs the most bytes; outputs left out are small."""
        if self.max_response_bytes is None:
            return
        names = set(self.requested_outputs) or {tensor.name for tensor in self.model.output_tensors()}
        sizes_by_output = {}
        for tensor in self.model.output_tensors():
            if tensor.name not in names or tensor.name not in sizes:
                continue
            as_json = tensor.name in self.json_outputs and not tensor.files
            if tensor.datatype == "BYTES":
                width = JSON_ESCAPE_FACTOR if as_json else 1
            else:
                width = JSON_WIDTHS[tensor.datatype] if as_json else np.dtype(NUMPY_TYPES[tensor.datatype]).itemsize
            sizes_by_output[tensor.name] = sizes[tensor.name] * width
        total = sum(sizes_by_output.values())
        if total > self.max_response_bytes:
            largest = max(sizes_by_output, key=sizes_by_output.get)
            raise InvalidArgument(
                f"the response could hold {total} bytes ({sizes_by_output[largest]} of them in output '{largest}'); "
                f"the limit is {self.max_response_bytes} ({setting}): ask for fewer or smaller results, or fewer "
                "outputs",
                field=largest,
            )

    def bytes_input(self, name: str) -> bytes | None:
        """A one-element BYTES input (an encoded file, say), or None when it was not sent."""
        array = self.inputs.get(name)
        if array is None:
            return None
        if array.size != 1:
            raise InvalidArgument(f"input '{name}': expected one element, got {array.size}", field=name)
        return array.reshape(-1)[0]

    def text_input(self, name: str) -> list[str] | None:
        """A BYTES input of UTF-8 texts, flattened, or None when it was not sent."""
        array = self.inputs.get(name)
        if array is None:
            return None
        try:
            return [value.decode("utf-8") for value in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidArgument(f"input '{name}': texts must be UTF-8", field=name) from None


Outputs = dict[str, Any]  # output name -> numpy array, or list of str/bytes for BYTES


class RequestTimes:
    """Where one request's time went, for its model's statistics: decoding its inputs and encoding its outputs
    (measured here), and its share of the batcher's queue and model time, read from the request's access-log
    record, which the batcher fills (the differences, as a ModelStreamInfer stream's requests share one record)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.spent = {"compute_input": 0.0, "compute_output": 0.0}
        self.record = logs.current_request.get()
        self.record_before = self._record_totals()

    def _record_totals(self) -> tuple[float, float, int]:
        record = self.record
        if record is None:
            return 0.0, 0.0, 0
        return (record.queue_ms or 0.0) / 1000, (record.compute_ms or 0.0) / 1000, record.batches

    @contextmanager
    def spent_in(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[stage] += time.perf_counter() - started

    def batcher_share(self) -> tuple[float, float, int]:
        """Seconds queued, seconds of model time, and the model calls the request took part in."""
        (queue_now, compute_now, batches_now), (queue_before, compute_before, batches_before) = (
            self._record_totals(), self.record_before,
        )
        return queue_now - queue_before, compute_now - compute_before, batches_now - batches_before


class Statistics:
    """Triton's statistics (its statistics extension) of one model version since the process started, REST and
    gRPC together. As Triton's: `success`/`fail` count requests and their whole time in the server; `queue`,
    `compute_*`, `inference_count` and `execution_count` only successful ones. `execution_count` adds the model
    calls of each request: a call that served a batch of n requests counts n times (Triton counts it once), as a
    request knows its share of a batch but not which other requests shared it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # REST and gRPC requests may record at once
        self.durations = {name: [0, 0] for name in STATISTIC_DURATIONS}  # name -> [count, nanoseconds]
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0

    @contextmanager
    def request(self) -> Iterator[RequestTimes]:
        """Records the request run inside: a success, or a failure when it raises."""
        times = RequestTimes()
        try:
            yield times
        except Exception:
            self._record(times, succeeded=False)
            raise
        self._record(times, succeeded=True)

    def _record(self, times: RequestTimes, succeeded: bool) -> None:
        elapsed = time.perf_counter() - times.started
        queue_s, compute_s, executions = times.batcher_share()
        with self.lock:
            self.last_inference_ms = max(self.last_inference_ms, int(time.time() * 1000))
            if not succeeded:
                self._add("fail", elapsed)
                return
            self._add("success", elapsed)
            self._add("queue", queue_s)
            self._add("compute_input", times.spent["compute_input"])
            self._add("compute_infer", compute_s)
            self._add("compute_output", times.spent["compute_output"])
            self.inference_count += 1
            self.execution_count += executions

    def _add(self, name: str, seconds: float) -> None:
        duration = self.durations[name]
        duration[0] += 1
        duration[1] += max(0, round(seconds * 1e9))

    def as_json(self, name: str, version: str) -> dict:
        """Triton's `$model_stat` object (the gRPC ModelStatistics message in its JSON form)."""
        with self.lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    stage: {"count": count, "ns": ns} for stage, (count, ns) in self.durations.items()
                },
                "response_stats": {},
                "batch_stats": [],
                "memory_usage": [],
            }


@dataclass
class OipModel:
    """What a service serves under /v2/models/{name}: its tensors, the parameters it honours, and its call.

    `infer` serves one request. `stream`, where an operation answers in parts (a transcript window by window,
    audio sentence by sentence), serves gRPC ModelStreamInfer with one response per part; REST infer and gRPC
    ModelInfer still answer once, through `infer`. `outputs` may be a function, for a model whose outputs are
    known only once it has loaded (a TF SavedModel's signature, say).
    """

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor] | Callable[[], list[Tensor]]
    infer: Callable[[InferRequest], Awaitable[Outputs]]
    parameters: list[Parameter] = field(default_factory=list)
    stream: Callable[[InferRequest], AsyncIterator[Outputs]] | None = None
    platform: str = "pytorch"
    versions: Callable[[], list[str]] = lambda: ["1"]
    ready: Callable[[str], bool] = lambda version: True
    # The batcher that runs its requests, described in its model configuration.
    batcher: DynamicBatcher | None = None
    statistics_by_version: dict[str, Statistics] = field(default_factory=dict, repr=False)

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": self.versions(),
            "platform": self.platform,
            "inputs": [tensor.metadata() for tensor in self.inputs],
            "outputs": [tensor.metadata() for tensor in self.output_tensors()],
        }

    def output_tensors(self) -> list[Tensor]:
        return self.outputs() if callable(self.outputs) else self.outputs

    def statistics(self, version: str) -> Statistics:
        return self.statistics_by_version.setdefault(version, Statistics())

    def config(self) -> dict:
        """Triton's model configuration (its model_configuration extension) in its JSON form. The tensors carry
        no batch dimension of Triton's kind, so `dims` are whole shapes and `max_batch_size` is 0, as Triton says
        of such models; the batcher joins whole requests, which `dynamic_batching` describes (its request limit
        in the parameter `max_batch_requests`). A model that streams parts is decoupled."""
        config: dict[str, Any] = {
            "name": self.name,
            "platform": self.platform,
            "backend": "",
            "max_batch_size": 0,
            "input": [
                {
                    "name": tensor.name, "data_type": CONFIG_TYPES[tensor.datatype], "format": "FORMAT_NONE",
                    "dims": list(tensor.shape), "is_shape_tensor": False, "allow_ragged_batch": False,
                    "optional": tensor.optional,
                }
                for tensor in self.inputs
            ],
            "output": [
                {
                    "name": tensor.name, "data_type": CONFIG_TYPES[tensor.datatype], "dims": list(tensor.shape),
                    "label_filename": "", "is_shape_tensor": False,
                }
                for tensor in self.output_tensors()
            ],
            "parameters": {},
            "model_transaction_policy": {"decoupled": self.stream is not None},
        }
        if self.batcher is not None:
            config["dynamic_batching"] = {
                "preferred_batch_size": [],
                "max_queue_delay_microseconds": round(self.batcher.max_wait_s * 1e6),
                "preserve_ordering": False,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": round(self.batcher.timeout_s * 1e6),
                    "allow_timeout_override": True,  # Triton's `timeout` request parameter
                    "max_queue_size": self.batcher.max_queue,
                },
            }
            config["parameters"]["max_batch_requests"] = {"string_value": str(self.batcher.max_batch_size)}
        return config

    def max_json_elements(self) -> int:
        """Each value of a JSON tensor is an element and so is the comma after it."""
        values = min(MAX_JSON_TENSOR_VALUES, sum(tensor.max_elements for tensor in self.inputs))
        return JSON_OVERHEAD_ELEMENTS + 2 * values


# A model, or a function answering the models served at the moment it is called: for a service whose models come
# and go while it serves (a model config reloaded).
ModelSource = OipModel | Callable[[], list[OipModel]]


class Registry:
    """Every OIP model of a process, by name."""

    def __init__(self, models: list[ModelSource], state: ServerState):
        self.state = state
        self.fixed: dict[str, OipModel] = {}
        self.sources: list[Callable[[], list[OipModel]]] = []
        for model in models:
            if not isinstance(model, OipModel):
                self.sources.append(model)
            elif model.name in self.fixed:
                raise ValueError(f"two services declare the OIP model {model.name!r}")
            else:
                self.fixed[model.name] = model

    def models(self) -> dict[str, OipModel]:
        """The models served now; a fixed model keeps its name against a source's model of the same name."""
        models = dict(self.fixed)
        for source in self.sources:
            for model in source():
                models.setdefault(model.name, model)
        return models

    def model(self, name: str, version: str = "") -> tuple[OipModel, str]:
        models = self.models()
        model = models.get(name)
        if model is None:
            known = ", ".join(sorted(models)) or "none"
            raise NotFound(f"unknown model '{name}'; this server serves: {known}")
        versions = model.versions()
        if not versions:
            raise NotFound(f"model '{name}' has no version loaded")
        if version and version not in versions:
            raise NotFound(f"model '{name}' has no version '{version}'; it has: {', '.join(versions)}")
        return model, version or versions[-1]

    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics response: every version of every model, of one model, or one version of it."""
        if name:
            model, _ = self.model(name, version)
            chosen = [(model, version)] if version else [(model, known) for known in model.versions()]
        else:
            chosen = [(model, known) for _, model in sorted(self.models().items()) for known in model.versions()]
        return {"model_stats": [model.statistics(known).as_json(model.name, known) for model, known in chosen]}


# -- request decoding -------------------------------------------------------------------------------------------


def _check_declaration(model: OipModel, declared: list[tuple[str, str, list[int]]]) -> dict[str, Tensor]:
    """Names, datatypes and shapes of the inputs sent, checked against the metadata before any data is read."""
    specs = {tensor.name: tensor for tensor in model.inputs}
    seen: dict[str, Tensor] = {}
    for name, datatype, shape in declared:
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected input '{name}' for model '{model.name}'; it takes: {', '.join(specs)}", field=name
            )
        if name in seen:
            raise InvalidArgument(f"input '{name}' sent twice", field=name)
        if datatype != spec.datatype:
            raise InvalidArgument(
                f"input '{name}': datatype {datatype or '(none)'} where model '{model.name}' expects {spec.datatype}",
                field=name,
            )
        if len(shape) != len(spec.shape) or any(
            dim < 0 or (want != -1 and dim != want) for dim, want in zip(shape, spec.shape, strict=False)
        ):
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} does not match the model's {list(spec.shape)} (-1: any size)",
                field=name,
            )
        elements = int(np.prod(shape, dtype=np.float64))
        if elements > spec.max_elements:
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} holds {elements} elements; the limit is {spec.max_elements}",
                field=name,
            )
        seen[name] = spec
    missing = [tensor.name for tensor in model.inputs if not tensor.optional and tensor.name not in seen]
    if missing:
        raise InvalidArgument(f"model '{model.name}' needs input(s): {', '.join(missing)}", field=missing[0])
    return seen


def _flatten(data: Any, name: str, expected: int) -> list:
    """Tensor data, row-major, nested or flat as the protocol allows (nesting is bounded by the JSON depth limit,
    the element count by the model's declared sizes, both checked before parsing)."""
    flat: list = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for value in item:
                walk(value)
        else:
            flat.append(item)

    walk(data)
    if len(flat) != expected:
        raise InvalidArgument(f"input '{name}': its shape holds {expected} elements, its data {len(flat)}", field=name)
    return flat


def _array_from_values(spec: Tensor, shape: list[int], data: Any) -> np.ndarray:
    """A tensor from JSON data or gRPC contents (BYTES: strings in JSON, bytes in contents)."""
    count = int(np.prod(shape, dtype=np.int64))
    flat = _flatten(data, spec.name, count)
    if spec.datatype == "BYTES":
        if not all(isinstance(value, str | bytes) for value in flat):
            raise InvalidArgument(f"input '{spec.name}': BYTES data in JSON are strings", field=spec.name)
        array = np.empty(count, dtype=np.object_)
        array[:] = [value.encode("utf-8") if isinstance(value, str) else value for value in flat]
        return array.reshape(shape)
    if spec.datatype == "BOOL":
        if not all(isinstance(value, bool) for value in flat):
            raise InvalidArgument(f"input '{spec.name}': BOOL data are true/false", field=spec.name)
    elif not all(isinstance(value, int | float) and not isinstance(value, bool) for value in flat):
        raise InvalidArgument(f"input '{spec.name}': {spec.datatype} data are numbers", field=spec.name)
    try:
        return np.asarray(flat, dtype=NUMPY_TYPES[spec.datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidArgument(f"input '{spec.name}': {exc}", field=spec.name) from None


def _decoded_base64(spec: Tensor, array: np.ndarray) -> np.ndarray:
    """A base64 input's JSON strings as the bytes they encode, each bounded by its length before it is decoded."""
    decoded = np.empty(array.size, dtype=np.object_)
    for index, text in enumerate(array.reshape(-1)):
        size = len(text.rstrip(b"=")) * 3 // 4
        if spec.max_bytes is not None and size > spec.max_bytes:
            raise PayloadTooLarge(
                f"input '{spec.name}': its base64 text holds {size} bytes; the limit is {spec.max_bytes}",
                field=spec.name,
            )
        try:
            decoded[index] = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            raise InvalidArgument(
                f"input '{spec.name}': not base64 text (a JSON request sends this binary input as standard base64: "
                "A-Z, a-z, 0-9, +, /, = padding, no line breaks)",
                field=spec.name,
            ) from None
    return decoded.reshape(array.shape)


def _array_from_raw(spec: Tensor, shape: list[int], raw: bytes) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if spec.datatype != "BYTES":
        dtype = np.dtype(NUMPY_TYPES[spec.datatype]).newbyteorder("<")
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input '{spec.name}': {len(raw)} bytes of data for {count} {spec.datatype} elements "
                f"({count * dtype.itemsize} bytes)",
                field=spec.name,
            )
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    values = []
    position = 0
    for _ in range(count):
        if position + 4 > len(raw):
            break
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + length > len(raw):
            break
        values.append(raw[position:position + length])
        position += length
    if len(values) != count or position != len(raw):
        raise InvalidArgument(
            f"input '{spec.name}': BYTES data do not hold {count} length-prefixed elements", field=spec.name
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = values
    return array.reshape(shape)


def _parameter_value(value: Any) -> Any:
    """An InferParameter (gRPC) as its Python value."""
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def _check_parameters(model: OipModel, parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters the model honours, typed; any other is refused by name (never silently ignored)."""
    known = {parameter.name: parameter for parameter in model.parameters}
    honoured = {}
    for name, value in parameters.items():
        if name in PROTOCOL_PARAMETERS:
            continue
        parameter = known.get(name)
        if parameter is None:
            accepted = ", ".join(known) or "none"
            raise InvalidArgument(
                f"parameter '{name}' is not supported by model '{model.name}' (it takes: {accepted})", field=name
            )
        if parameter.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, parameter.kind) or (parameter.kind is int and isinstance(value, bool)):
            raise InvalidArgument(
                f"parameter '{name}': expected {parameter.kind.__name__}, got {type(value).__name__}", field=name
            )
        honoured[name] = value
    return honoured


def _timeout(parameters: dict[str, Any]) -> float | None:
    """Triton's `timeout` request parameter, in microseconds."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidArgument("parameter 'timeout': a positive number of microseconds", field="timeout")
    return value / 1e6


def _requested_outputs(model: OipModel, names: list[str]) -> list[Tensor]:
    outputs = model.output_tensors()
    specs = {tensor.name: tensor for tensor in outputs}
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise InvalidArgument(
            f"unknown output '{unknown[0]}' of model '{model.name}'; it has: {', '.join(specs)}", field=unknown[0]
        )
    # Each copy would be sent again: 700 copies of an image made a 525 MiB answer from a 14 KB request.
    seen = set()
    for name in names:
        if name in seen:
            raise InvalidArgument(f"output '{name}' requested more than once", field=name)
        seen.add(name)
    return [specs[name] for name in names] if names else outputs


# -- response encoding ------------------------------------------------------------------------------------------


def _output_array(spec: Tensor, value: Any) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.array(value, dtype=np.object_)
        flat = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in array.reshape(-1)]
        encoded = np.empty(len(flat), dtype=np.object_)
        encoded[:] = flat
        return encoded.reshape(array.shape)
    return np.asarray(value, dtype=NUMPY_TYPES[spec.datatype])


def _raw(spec: Tensor, array: np.ndarray) -> bytes:
    if spec.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=np.dtype(NUMPY_TYPES[spec.datatype]).newbyteorder("<")).tobytes()


def _json_data(spec: Tensor, array: np.ndarray) -> list | None:
    """Flat JSON data, or None where BYTES are not UTF-8 text (an encoded file): those travel as binary."""
    if spec.datatype != "BYTES":
        return array.reshape(-1).tolist()
    try:
        return [item.decode("utf-8") for item in array.reshape(-1)]
    except UnicodeDecodeError:
        return None


def _outputs(request: InferRequest, requested: list[Tensor], produced: Outputs) -> list[tuple[Tensor, np.ndarray]]:
    """The outputs to send: all the model produced, or those the client named, each of which must exist."""
    missing = [name for name in request.requested_outputs if name not in produced]
    if missing:
        raise InvalidArgument(
            f"output '{missing[0]}' is not produced for this request (produced: {', '.join(produced)})",
            field=missing[0],
        )
    return [(spec, _output_array(spec, produced[spec.name])) for spec in requested if spec.name in produced]


# -- REST ---------------------------------------------------------------------------------------------------------


def error_body(error: ServiceError) -> dict:
    """The protocol's error shape, for every refusal on a /v2 route (the REST server's own included)."""
    return {"error": error.message}


def _error(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=int(error.http_status), headers=error.headers())


def _header_length(value: str | None) -> int | None:
    """Inference-Header-Content-Length: ASCII digits only (str.isdigit() also takes '²', which int() refuses)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise InvalidArgument(f"Inference-Header-Content-Length {value[:40]!r} is not a number of bytes")
    return int(value)


def _checked_body(body: bytes, encoding: str | None, limit: int, header_length: int | None, scanner: JsonScanner) -> bytes:
    """The body, inflated when it is gzip/deflate (tritonclient's request compression), with its JSON header
    (all of it, or its first `header_length` bytes) checked against the model's JSON limits piece by piece: a
    small body that inflates to megabytes of tensor values is refused once they pass the limit, not parsed."""
    if not encoding or encoding == "identity":
        pieces = iter([body])
    elif encoding in ("gzip", "deflate"):
        pieces = _inflated(body, encoding, limit)
    else:
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported (gzip, deflate)")
    kept, size = [], 0
    header_left = header_length
    for piece in pieces:
        size += len(piece)
        if size > limit:
            raise PayloadTooLarge(f"request body inflates beyond the {limit} byte limit")
        json_part = piece if header_left is None else piece[:header_left]
        if header_left is not None:
            header_left -= len(json_part)
        if json_part and (problem := scanner.feed(json_part)):
            raise InvalidArgument(f"request body: {problem}")
        kept.append(piece)
    if header_length is not None and header_length > size:
        raise InvalidArgument(f"Inference-Header-Content-Length {header_length} does not fit the body")
    if problem := scanner.feed(b"", final=True):
        raise InvalidArgument(f"request body: {problem}")
    return kept[0] if len(kept) == 1 else b"".join(kept)


def _inflated(body: bytes, encoding: str, limit: int):
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    data, inflated = body, 0
    try:
        while not inflater.eof and inflated <= limit:
            piece = inflater.decompress(data, INFLATE_PIECE_BYTES)
            data = inflater.unconsumed_tail
            if not piece and not data:
                break
            inflated += len(piece)
            yield piece
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding}: {exc}") from None
    if not inflater.eof and inflated <= limit:
        raise InvalidArgument(f"request body is not valid {encoding}: it ends early")


def _tensor_parameters(entry: dict, kind: str) -> dict:
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidArgument(f"{kind} '{entry.get('name')}': 'parameters' must be an object", field="parameters")
    return parameters


def _shape(entry: dict) -> list[int]:
    shape = entry.get("shape")
    # Dimensions are int64 in the protocol (and in numpy): a larger one is a malformed shape, not an overflow.
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and -(2**63) <= dim < 2**63 for dim in shape
    ):
        raise InvalidArgument(
            f"input '{entry.get('name')}': 'shape' must be a list of 64-bit integers", field="shape"
        )
    return shape


def _rest_request(
    model: OipModel, version: str, header: bytes, binary: bytes, limits: "RestLimits"
) -> tuple[InferRequest, list[Tensor], bool, dict[str, bool]]:
    """The request from its JSON header (already checked against the model's JSON limits) and binary tensors."""
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("request body must be a JSON object")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(entry, dict) for entry in inputs):
        raise InvalidArgument("'inputs' must be a list of tensors", field="inputs")
    declared = [(str(entry.get("name")), str(entry.get("datatype", "")), _shape(entry)) for entry in inputs]
    specs = _check_declaration(model, declared)

    arrays = {}
    position = 0
    for entry, (name, _, shape) in zip(inputs, declared, strict=True):
        spec = specs[name]
        size = _tensor_parameters(entry, "input").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or position + size > len(binary):
                raise InvalidArgument(f"input '{name}': binary_data_size {size} runs past the body", field=name)
            arrays[name] = _array_from_raw(spec, shape, binary[position:position + size])
            position += size
        elif "data" in entry:
            array = _array_from_values(spec, shape, entry["data"])
            arrays[name] = _decoded_base64(spec, array) if spec.json_base64 else array
        else:
            raise InvalidArgument(f"input '{name}': no 'data' and no binary_data_size", field=name)
    if position != len(binary):
        raise InvalidArgument(f"{len(binary) - position} bytes of binary data after the last binary input")

    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be an object", field="parameters")
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(entry, dict) for entry in outputs):
        raise InvalidArgument("'outputs' must be a list", field="outputs")
    requested = _requested_outputs(model, [str(entry.get("name")) for entry in outputs])
    binary_outputs = {
        str(entry.get("name")): bool(_tensor_parameters(entry, "output").get("binary_data")) for entry in outputs
    }
    all_binary = bool(parameters.get("binary_data_output"))
    request = InferRequest(
        model, version, str(document.get("id", "")), arrays, _check_parameters(model, parameters),
        timeout=_timeout(parameters), requested_outputs=tuple(spec.name for spec in requested if outputs),
        max_response_bytes=limits.max_response_bytes,
        json_outputs=frozenset(
            () if all_binary else (spec.name for spec in requested if not binary_outputs.get(spec.name))
        ),
    )
    return request, requested, all_binary, binary_outputs


def _rest_response(
    request: InferRequest, requested: list[Tensor], produced: Outputs, all_binary: bool, binary: dict[str, bool]
) -> Response:
    entries, chunks = [], []
    for spec, array in _outputs(request, requested, produced):
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        data = None if (all_binary or binary.get(spec.name)) else _json_data(spec, array)
        if data is None:
            raw = _raw(spec, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data
        entries.append(entry)
    document: dict[str, Any] = {"model_name": request.model.name, "model_version": request.version, "outputs": entries}
    if request.id:
        document["id"] = request.id
    if request.response_parameters:
        document["parameters"] = request.response_parameters
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks), media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


@dataclass(frozen=True)
class RestLimits:
    max_body_bytes: int
    max_json_depth: int
    max_response_bytes: int | None = None


def create_router(registry: Registry, limits: RestLimits) -> APIRouter:
    """/v2 for every model of the process. Errors answer in the protocol's own shape, whatever the services'."""
    router = APIRouter(tags=["open inference protocol (v2)"])
    state = registry.state

    @router.get("/v2")
    @router.get("/v2/", include_in_schema=False)  # the server-metadata path as the protocol's docs write it
    async def server_metadata():
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    @router.get("/v2/health/live")
    async def server_live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def server_ready():
        if state.serving:
            return {"ready": True}
        return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": "5"})

    def model_document(describe: Callable[["OipModel"], dict]):
        """A GET of one model's document (metadata, config): an unknown model or version answers the OIP error."""

        async def document(name: str, version: str = ""):
            try:
                model, _ = registry.model(name, version)
            except ServiceError as error:
                return _error(error)
            return describe(model)

        document.__name__ = f"model_{describe.__name__}"  # FastAPI's operationId, as before
        return document

    model_metadata = model_document(OipModel.metadata)

    async def model_ready(name: str, version: str = ""):
        try:
            model, version = registry.model(name, version)
        except ServiceError as error:
            return _error(error)
        ready = state.serving and model.ready(version)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(request: Request, name: str, version: str = ""):
        try:
            model, version = registry.model(name, version)
            with model.statistics(version).request() as times:
                header_length = _header_length(request.headers.get(HEADER_LENGTH))
                scanner = JsonScanner(max_depth=limits.max_json_depth, max_elements=model.max_json_elements())
                body = await request.body()
                # Inflating and parsing a large JSON tensor is CPU work: off the event loop, which serves every
                # other request.
                with times.spent_in("compute_input"):
                    body = await asyncio.to_thread(
                        _checked_body, body, request.headers.get("content-encoding"), limits.max_body_bytes,
                        header_length, scanner,
                    )
                    header, binary = (
                        (body, b"") if header_length is None else (body[:header_length], body[header_length:])
                    )
                    infer_request, requested, all_binary, binary_outputs = await asyncio.to_thread(
                        _rest_request, model, version, header, binary, limits
                    )
                infer_request.disconnected = request.is_disconnected
                produced = await infer_request.model.infer(infer_request)
                with times.spent_in("compute_output"):
                    return _rest_response(infer_request, requested, produced, all_binary, binary_outputs)
        except ServiceError as error:
            return _error(error)

    model_config = model_document(OipModel.config)

    async def model_statistics(name: str = "", version: str = ""):
        try:
            return registry.statistics(name, version)
        except ServiceError as error:
            return _error(error)

    # Before /v2/models/{name}, which would take "stats" for a model's name.
    router.add_api_route("/v2/models/stats", model_statistics, methods=["GET"])
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"])
        router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"])
        router.add_api_route(f"{prefix}/infer", infer, methods=["POST"])
        router.add_api_route(f"{prefix}/config", model_config, methods=["GET"])
        router.add_api_route(f"{prefix}/stats", model_statistics, methods=["GET"])
    return router


# -- gRPC -----------------------------------------------------------------------------------------------------------


def _grpc_request(registry: Registry, message, max_response_bytes: int | None) -> tuple[InferRequest, list[Tensor]]:
    model, version = registry.model(message.model_name, message.model_version)
    declared = [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in message.inputs]
    specs = _check_declaration(model, declared)
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    arrays = {}
    for index, tensor in enumerate(message.inputs):
        spec = specs[tensor.name]
        if raw:
            arrays[tensor.name] = _array_from_raw(spec, list(tensor.shape), raw[index])
            continue
        contents_field = CONTENTS_FIELDS.get(spec.datatype)
        if contents_field is None:
            raise InvalidArgument(f"input '{tensor.name}': {spec.datatype} data travel in raw_input_contents")
        values = list(getattr(tensor.contents, contents_field))
        arrays[tensor.name] = _array_from_values(spec, list(tensor.shape), values)
    parameters = {key: _parameter_value(value) for key, value in message.parameters.items()}
    requested = _requested_outputs(model, [output.name for output in message.outputs])
    request = InferRequest(
        model, version, message.id, arrays, _check_parameters(model, parameters), timeout=_timeout(parameters),
        requested_outputs=tuple(output.name for output in message.outputs), max_response_bytes=max_response_bytes,
    )
    return request, requested


def _set_parameter(target, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value if isinstance(value, str) else json.dumps(value)


def _grpc_response(request: InferRequest, requested: list[Tensor], produced: Outputs):
    response = pb.ModelInferResponse(model_name=request.model.name, model_version=request.version, id=request.id)
    for key, value in request.response_parameters.items():
        _set_parameter(response.parameters[key], value)
    for spec, array in _outputs(request, requested, produced):
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
        response.raw_output_contents.append(_raw(spec, array))
    return response


class InferenceServicer:
    """inference.GRPCInferenceService for every OIP model of the process."""

    def __init__(self, registry: Registry, max_response_bytes: int | None = None):
        self.registry = registry
        # The server's send limit: a response beyond it would be built only to fail.
        self.max_response_bytes = max_response_bytes

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.registry.state.serving)

    async def ModelReady(self, request, context):
        model, version = self.registry.model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.registry.state.serving and model.ready(version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        model, _ = self.registry.model(request.name, request.version)
        metadata = model.metadata()
        response = pb.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"], platform=model.platform)
        for tensor in model.inputs:
            # No tensor parameters in gRPC metadata; none needed: gRPC carries a base64 input's raw bytes.
            response.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for tensor in model.output_tensors():
            response.outputs.add(**tensor.metadata())
        return response

    async def ModelInfer(self, message, context):
        model, version = self.registry.model(message.model_name, message.model_version)
        with model.statistics(version).request() as times:
            with times.spent_in("compute_input"):
                request, requested = await asyncio.to_thread(
                    _grpc_request, self.registry, message, self.max_response_bytes
                )
            request.timeout = _earliest(request.timeout, context.time_remaining())
            produced = await request.model.infer(request)
            with times.spent_in("compute_output"):
                return _grpc_response(request, requested, produced)

    async def ModelConfig(self, request, context):
        model, _ = self.registry.model(request.name, request.version)
        return json_format.ParseDict({"config": model.config()}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request, context):
        return json_format.ParseDict(
            self.registry.statistics(request.name, request.version), pb.ModelStatisticsResponse()
        )

    async def ModelStreamInfer(self, messages, context):
        """Requests of a stream are served in turn; a failed one answers error_message and the stream goes on."""
        async for message in messages:
            async for response in self._stream_responses(message, context):
                yield response

    async def _stream_responses(self, message, context) -> AsyncIterator:
        """One request's responses as Triton sends them: each carries `triton_final_response`, true on the last
        (an error response ends its request, so it is final). A streaming (decoupled) model's part is known to be
        the last only when the model ends, so its parts go out one behind; with
        `triton_enable_empty_final_response` each goes out as soon as it is made and an empty response carries the
        final flag, as for Triton's decoupled models. Other models answer once, final, whatever that asks."""
        version, held = message.model_version, None
        try:
            model, version = self.registry.model(message.model_name, message.model_version)
            each_at_once = model.stream is not None and EMPTY_FINAL_RESPONSE in message.parameters and (
                _parameter_value(message.parameters[EMPTY_FINAL_RESPONSE]) is True
            )
            with model.statistics(version).request() as times:
                with times.spent_in("compute_input"):
                    request, requested = await asyncio.to_thread(
                        _grpc_request, self.registry, message, self.max_response_bytes
                    )
                request.timeout = _earliest(request.timeout, context.time_remaining())
                parts = _single(model.infer(request)) if model.stream is None else model.stream(request)
                async for produced in parts:
                    with times.spent_in("compute_output"):
                        response = _stream_response(_grpc_response(request, requested, produced), final=False)
                    if each_at_once:
                        yield response
                        continue
                    if held is not None:
                        yield held
                    held = response
        except ServiceError as error:
            if held is not None:
                yield held
            yield _stream_response(
                pb.ModelInferResponse(model_name=message.model_name, model_version=version, id=message.id),
                final=True, error=error,
            )
            return
        if held is None:
            empty = pb.ModelInferResponse(model_name=message.model_name, model_version=version, id=message.id)
            yield _stream_response(empty, final=True)
        else:
            held.infer_response.parameters[FINAL_RESPONSE].bool_param = True
            yield held


def _stream_response(response, final: bool, error: ServiceError | None = None):
    """A ModelStreamInfer response carrying Triton's final flag (and, for a failed request, its error)."""
    response.parameters[FINAL_RESPONSE].bool_param = final
    message = f"{error.grpc_code.name}: {error.message}" if error is not None else ""
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


async def _single(outputs: Awaitable[Outputs]) -> AsyncIterator[Outputs]:
    yield await outputs


def _earliest(a: float | None, b: float | None) -> float | None:
    return min((value for value in (a, b) if value is not None), default=None)


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the servicer under the protocol's names (its messages live outside protobuf's default pool)."""
    unary = {
        "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    }
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method), request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for method, (request, response) in unary.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(pb.SERVICE_NAME, handlers),))
