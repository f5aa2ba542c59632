"""A loaded SavedModel version and what every transport checks a request against: its signatures, the Predict
job one request becomes (with what the batcher reads of it) and TF Serving's input and output-filter checks.

The lowest layer of the server: the runner, the request schemas, Classify/Regress and every transport build
on it, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from services.kit.batcher import Disconnected, DynamicBatcher
from services.kit.errors import InvalidArgument, NotFound, ServiceError

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"


def tf_error(exc: tf.errors.OpError) -> ServiceError:
    """A TensorFlow runtime error as the client should read it (without the graph-internal noise)."""
    kept, in_trace = [], False
    # Eager calls wrap the kernel's message in "Graph execution error:", "Detected at node ...", a
    # Python trace and a "[[{{node ...}}]] [Op:...]" suffix; TF Serving clients get the kernel message.
    for line in exc.message.splitlines():
        stripped = line.strip()
        if not stripped or stripped == "Graph execution error:" or stripped.startswith("[[{{node"):
            continue
        if stripped.startswith("Detected at node"):
            in_trace = True
            continue
        if in_trace and (line.startswith("  ") or stripped == "<stack traces unavailable>"):
            continue
        in_trace = False
        kept.append(stripped)
    message = " ".join(kept) or exc.message
    if isinstance(exc, tf.errors.InvalidArgumentError | tf.errors.OutOfRangeError):
        return InvalidArgument(message)
    return ServiceError(message)


def servable_not_found(name: str, version: int | None) -> NotFound:
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return NotFound(f"Servable not found for request: {request}")


@dataclass(frozen=True)
class Signature:
    name: str
    function: Any  # the SavedModel's ConcreteFunction
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.OpError as exc:
            raise tf_error(exc) from None
        return {key: value.numpy() for key, value in outputs.items()}


class Servable:
    """One loaded version: its callable signatures and the SignatureDefs TF Serving reports as metadata."""

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in self._loaded.signatures.items()
        }
        saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        meta_graph = next(
            (m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags),
            saved_model.meta_graphs[0],
        )
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)


@dataclass(frozen=True, eq=False)
class PredictJob:
    """One Predict request, validated against its signature."""

    servable: Servable
    signature: Signature
    inputs: dict[str, np.ndarray]
    output_filter: tuple[str, ...] = ()

    @property
    def rows(self) -> int | None:
        """The shared leading (batch) dimension, or None when the inputs have none to merge along."""
        sizes = {value.shape[0] if value.ndim else None for value in self.inputs.values()}
        size = sizes.pop() if len(sizes) == 1 else None
        return size or None

    @property
    def cost(self) -> int:
        """What the batcher budgets a request in: its rows (each becomes a full-size image in the graph)."""
        return self.rows or 1

    @property
    def nbytes(self) -> int:
        return sum(
            sum(len(item) for item in value.ravel()) if value.dtype == object else value.nbytes
            for value in self.inputs.values()
        )

    @property
    def batch_key(self) -> tuple:
        """Requests merge only when every input agrees in dtype and in all dimensions but the first."""
        shapes = tuple(sorted((key, value.dtype.str, value.shape[1:]) for key, value in self.inputs.items()))
        alone = () if self.rows else (id(self),)
        return (self.servable.name, self.servable.version, self.signature.name, shapes, *alone)

    def select(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_filter or sorted(outputs)
        return {name: outputs[name] for name in names}

    async def run_in(
        self,
        batcher: DynamicBatcher,
        *,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
    ) -> dict[str, np.ndarray]:
        """The job queued, merged with others of its batch key and run: its outputs (output filter applied)."""
        return await batcher.submit(
            self,
            key=self.batch_key,
            timeout=timeout,
            disconnected=disconnected,
            cost=self.cost,
            nbytes=self.nbytes,
        )


def validate_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> None:
    """The checks TF Serving makes before running a signature (its messages where it has them)."""
    validate_declared(
        signature,
        {
            key: (tf.as_dtype(value.dtype) if value.dtype != object else tf.string, list(value.shape))
            for key, value in inputs.items()
        },
    )


def validate_declared(signature: Signature, inputs: dict[str, tuple[tf.DType, list[int]]]) -> None:
    """validate_inputs on what the request declares (dtype, shape), before any tensor exists."""
    expected, sent = set(signature.inputs), set(inputs)
    if len(sent) != len(expected):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    for index, (key, (dtype, shape)) in enumerate(sorted(inputs.items())):
        spec = signature.inputs.get(key)
        if spec is None:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {key}. "
                f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
            )
        if dtype != spec.dtype:
            raise InvalidArgument(
                f"Expects arg[{index}] to be {spec.dtype.name} but {dtype.name} is provided"
            )
        if not spec.shape.is_compatible_with(shape):
            raise InvalidArgument(
                f"input {key}: shape {shape} is not compatible with the signature's "
                f"{spec.shape.as_list() if spec.shape.rank is not None else 'shape'} (None = any size)"
            )


def validate_output_filter(signature: Signature, output_filter: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(output_filter)


@dataclass(frozen=True)
class VersionState:
    """A version as GetModelStatus reports it: AVAILABLE, or END (unloaded, or failed with `error`)."""

    version: int
    available: bool
    error: str = ""
