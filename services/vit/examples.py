"""TF Serving's Classify and Regress: tf.Example inputs (gRPC ``Input``, REST ``{"context", "examples"}``), the
checks on classification and regression SignatureDefs, and their results as protos and as JSON.

A request's examples become one DT_STRING tensor of serialized tf.Examples (a context, when sent, is
serialized in front of each, as TF Serving does: the example's features override the context's). Counts,
values and bytes are bounded before any example is built or serialized, and image bytes in the features
are header-checked like Predict's string inputs. Messages are TF Serving's (classifier.cc, regressor.cc,
servables/tensorflow/util.cc, util/json_tensor.cc).
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from services.kit.errors import InvalidArgument

from .errors import FailedPrecondition
from .limits import RequestLimits, TensorBudget, check_image_headers
from .schemas import b64_decode, is_b64_object, json_type, show_json
from .servables import DEFAULT_SIGNATURE, PredictJob, Servable

INPUTS = "inputs"
CLASSES = "classes"
SCORES = "scores"
OUTPUTS = "outputs"


class Method(enum.Enum):
    """A SignatureDef's method_name, and what TF Serving calls the method in its messages."""

    CLASSIFY = "tensorflow/serving/classify"
    REGRESS = "tensorflow/serving/regress"

    @property
    def noun(self) -> str:
        return "classification" if self is Method.CLASSIFY else "regression"


# -- signatures -------------------------------------------------------------------------------------


def inference_signature(
    servable: Servable, signature_name: str, method: Method
) -> meta_graph_pb2.SignatureDef:
    """GetClassificationSignatureDef / GetRegressionSignatureDef, then PreProcessClassification /
    PreProcessRegression."""
    name = signature_name or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(name)
    if signature_def is None or name not in servable.signatures:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    if signature_def.method_name != method.value:
        raise InvalidArgument(
            f"Expected {method.noun} signature method_name to be {method.value}. Was: {signature_def.method_name}"
        )
    if len(signature_def.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    outputs = len(signature_def.outputs)
    if method is Method.CLASSIFY and outputs not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {outputs}")
    if method is Method.REGRESS and outputs != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if INPUTS not in signature_def.inputs:
        raise FailedPrecondition(f"No {method.noun} inputs found in SignatureDef: {name}")
    if method is Method.CLASSIFY and not {CLASSES, SCORES} & set(signature_def.outputs):
        raise FailedPrecondition(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f"Signature was: {name}"
        )
    if method is Method.REGRESS and OUTPUTS not in signature_def.outputs:
        raise FailedPrecondition(f"No regression outputs found in SignatureDef: {name}")
    return signature_def


def inference_job(
    servable: Servable, signature_name: str, method: Method, examples: list[bytes]
) -> PredictJob:
    """The signature run on the serialized examples, batched like Predict (examples are its rows)."""
    signature_def = inference_signature(servable, signature_name, method)
    wanted = (CLASSES, SCORES) if method is Method.CLASSIFY else (OUTPUTS,)
    return PredictJob(
        servable,
        servable.signatures[signature_name or DEFAULT_SIGNATURE],
        {INPUTS: np.array(examples, dtype=object)},
        tuple(name for name in wanted if name in signature_def.outputs),
    )


# -- examples ---------------------------------------------------------------------------------------


def _feature_values(feature: feature_pb2.Feature) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _check_examples(
    examples: list[example_pb2.Example], context: example_pb2.Example | None, limits: RequestLimits
) -> None:
    """Count, values, bytes (the context once per example) and image headers, before anything is serialized."""
    if not examples:
        raise InvalidArgument("Input is empty.")
    budget = TensorBudget(limits)
    budget.check_rows(len(examples), "the request's examples")
    copies = [(context, len(examples))] if context is not None else []
    for example, count in [*copies, *((example, 1) for example in examples)]:
        budget.take_string_bytes(INPUTS, example.ByteSize() * count)
        for name, feature in sorted(example.features.feature.items()):
            values = _feature_values(feature)
            budget.take_elements(f"{INPUTS} feature {name}", [len(values) * count])
            if feature.WhichOneof("kind") == "bytes_list":
                check_image_headers(f"{INPUTS} feature {name}", np.array(values, dtype=object), limits)


def _serialize(examples: list[example_pb2.Example], context: example_pb2.Example | None) -> list[bytes]:
    prefix = context.SerializeToString() if context is not None else b""
    return [prefix + example.SerializeToString() for example in examples]


def input_examples(request_input: input_pb2.Input, limits: RequestLimits | None) -> list[bytes]:
    """A gRPC Input as serialized examples (InputToSerializedExampleTensor); unbounded only for warm-up
    records, which come with the model."""
    kind = request_input.WhichOneof("kind")
    context = None
    if kind == "example_list":
        repeated = request_input.example_list.examples
    elif kind == "example_list_with_context":
        repeated = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context
    else:
        repeated = []
    if limits is not None and len(repeated):
        TensorBudget(limits).check_rows(len(repeated), "the request's examples")  # before any is touched
    examples = list(repeated)
    if limits is not None:
        _check_examples(examples, context, limits)
    elif not examples:
        raise InvalidArgument("Input is empty.")
    return _serialize(examples, context)


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _add_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature: JSON strings and {"b64": ...} are bytes, decimals floats, integers and booleans
    int64; a feature holds one kind."""
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64_object(value)):
        raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        kind, item = "int64_list", int(value)
    elif isinstance(value, dict):
        kind, item = "bytes_list", b64_decode(value)
    elif isinstance(value, str):
        kind, item = "bytes_list", value.encode()
    elif isinstance(value, int) and -(2**63) <= value < 2**64:
        if value >= 2**63:
            raise InvalidArgument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        kind, item = "int64_list", value
    else:
        # Decimals, and integers past uint64 (rapidjson reads those as doubles).
        item = float(value)
        if math.isfinite(item) and abs(item) > float(np.finfo(np.float32).max):
            raise InvalidArgument(
                f"Cannot convert JSON value: {show_json(value)} to float without loss of precision."
            )
        kind = "float_list"
    present = feature.WhichOneof("kind")
    if present not in (None, kind):
        raise InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[present]}"
        )
    getattr(feature, kind).value.append(item)


def _example_from_json(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)
    return example


def json_examples(doc: dict, limits: RequestLimits) -> list[bytes]:
    """FillClassifyRegressRequestFromJson's checks and messages (its 'When method is classify' wording
    serves :regress too), with the example count bounded before any example is built."""
    context = _example_from_json(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise InvalidArgument(
            f"JSON Value: {show_json(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    items = doc["examples"]
    if not isinstance(items, list):
        raise InvalidArgument(f"JSON Value: {show_json(doc)} Expecting 'examples' value to be an list/array")
    if not items:
        raise InvalidArgument(f"JSON Value: {show_json(doc)} 'examples' value is an empty array")
    TensorBudget(limits).check_rows(len(items), "'examples'")
    examples = [_example_from_json(item) for item in items]
    _check_examples(examples, context, limits)
    return _serialize(examples, context)


# -- results ----------------------------------------------------------------------------------------


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def _dtype_name(array: np.ndarray) -> str:
    if array.dtype == object:
        return "DT_STRING"
    return types_pb2.DataType.Name(tf.as_dtype(array.dtype).as_datatype_enum)


def classification_result(
    outputs: dict[str, np.ndarray], examples: int
) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult: classes [batch, n] DT_STRING and/or scores [batch, n] DT_FLOAT."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for alias, array, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise InvalidArgument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}")
        if _dtype_name(array) != dtype:
            raise InvalidArgument(f"Expected {alias} Tensor of {dtype}. Got: {_dtype_name(array)}")
        if array.shape[0] != examples:
            raise InvalidArgument(f"Expected {alias} output batch size of {examples}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for row in range(examples):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", errors="replace")
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regression_result(outputs: dict[str, np.ndarray], examples: int) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult: outputs [batch] or [batch, 1] DT_FLOAT."""
    values = outputs[OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InvalidArgument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(values)}"
        )
    if values.shape[0] != examples:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {examples} vs. {values.shape[0]}"
        )
    if _dtype_name(values) != "DT_FLOAT":
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(values)}")
    result = regression_pb2.RegressionResult()
    for value in values.ravel():
        result.regressions.add(value=float(value))
    return result


def _decimal(value: float) -> float:
    # Scores are float32: their shortest decimal form is what TF Serving writes, not the double's.
    return float(str(np.float32(value)))


def classification_json(result: classification_pb2.ClassificationResult) -> dict:
    """TF Serving's REST answer: {"results": [[[label, score], ...], ...]}, one list per example."""
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    return {
        "results": [
            [[entry.label, _decimal(entry.score)] for entry in classifications.classes]
            for classifications in result.classifications
        ]
    }


def regression_json(result: regression_pb2.RegressionResult) -> dict:
    """TF Serving's REST answer: {"results": [value, ...]}, one value per example."""
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return {"results": [_decimal(regression.value) for regression in result.regressions]}


# -- exporting ----------------------------------------------------------------------------------------


def set_method_names(export_dir: Path, methods: dict[str, Method]) -> None:
    """Mark signatures of a written SavedModel as classification or regression ones.

    TF2's exporters (tf.saved_model.save, keras ExportArchive) write every signature with the predict
    method; TF Serving's Classify and Regress accept only signatures whose method_name says so.
    """
    path = Path(export_dir) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method.value
    path.write_bytes(saved_model.SerializeToString())
    # The fingerprint records saved_model.pb's checksum: rewrite it for the changed file.
    fingerprinting_utils.write_fingerprint(str(export_dir))
