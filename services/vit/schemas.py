"""TF Serving's wire formats: the REST JSON predict format (row ``instances`` / columnar ``inputs`` in,
``predictions`` / ``outputs`` out, ``{"b64": ...}`` for bytes), and the status and metadata responses
shared by REST (as JSON) and gRPC (as protos). Error messages follow TF Serving's where it has them.
"""

import base64
import binascii
import enum
import json
import math
import re
from typing import Any

import numpy as np
import rapidjson
import tensorflow as tf
from google.protobuf.json_format import MessageToDict
from google.protobuf.wrappers_pb2 import Int64Value
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from services.kit.errors import InvalidArgument, ServiceError

from .limits import RequestLimits, TensorBudget, check_json_structure
from .servables import Servable, VersionState

B64_KEY = "b64"
# Output tensors whose alias ends with this hold binary strings and are sent as {"b64": ...}.
BYTES_SUFFIX = "_bytes"
SIGNATURE_DEF_FIELD = "signature_def"
# python-rapidjson's wording of rapidjson's parse errors (GetParseError_En and GetErrorOffset, which TF Serving
# quotes).
RAPIDJSON_ERROR = re.compile(r"Parse error at offset (?P<offset>\d+): (?P<message>.*)", re.DOTALL)


class Format(enum.Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def error_body(error: ServiceError) -> dict:
    """TF Serving's REST error shape, for every error this process answers."""
    return {"error": error.message}


# -- requests -----------------------------------------------------------------------------------


def show_json(value: Any, limit: int = 200) -> str:
    """A JSON value for an error message, cut short (requests carry megabytes of base64)."""
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= limit else text[:limit] + "..."


def json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return str(value)
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _dtype_name(dtype: tf.DType) -> str:
    return {tf.float32: "float", tf.float64: "double"}.get(dtype, dtype.name)


def parse_json(body: bytes, limits: RequestLimits) -> dict:
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    check_json_structure(body, limits)
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(parse_error(body, exc)) from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {show_json(doc)} Is not object")
    return doc


def parse_error(body: bytes, error: json.JSONDecodeError) -> str:
    """TF Serving's message for a body that is not JSON: its parser's (rapidjson's) own words and byte offset,
    as json_tensor.cc's ParseJson writes them; Python's where rapidjson (with NaN and Infinity allowed, as TF
    Serving's kParseNanAndInfFlag) reads the body after all."""
    try:
        rapidjson.loads(body, number_mode=rapidjson.NM_NAN)
    except (rapidjson.JSONDecodeError, ValueError) as exc:
        if match := RAPIDJSON_ERROR.fullmatch(str(exc)):
            return f"JSON Parse error: {match['message']} at offset: {match['offset']}"
    return f"JSON Parse error: {error.msg} at offset: {error.pos}"


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {show_json(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def is_b64_object(value: Any) -> bool:
    """{"b64": "<base64>"} with no other key: binary data, not a named-input object."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def b64_decode(value: Any) -> bytes:
    if not is_b64_object(value):
        raise InvalidArgument(f"JSON Value: {show_json(value)} not formatted correctly for base64 data")
    text = value[B64_KEY]
    try:
        # Standard alphabet; padding may be left off, as absl::Base64Unescape allows.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def _scalar(value: Any, dtype: tf.DType, name: str, budget: TensorBudget) -> Any:
    def type_error() -> InvalidArgument:
        return InvalidArgument(
            f"JSON Value: {show_json(value)} Type: {json_type(value)} is not of expected type: {_dtype_name(dtype)}"
        )

    if dtype == tf.string:
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, dict):
            data = b64_decode(value)
        else:
            raise type_error()
        budget.take_string_bytes(name, len(data))
        return data
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error()
    if dtype.is_floating:
        limit = np.finfo(dtype.as_numpy_dtype)
        if isinstance(value, int):
            lossy = abs(value) > 2 ** (limit.nmant + 1) - 1  # past this, integers skip representable values
        else:
            lossy = math.isfinite(value) and abs(value) > float(limit.max)  # NaN and Infinity are fine
        if lossy:
            raise InvalidArgument(
                f"Cannot convert JSON value: {show_json(value)} to {_dtype_name(dtype)} without loss of precision."
            )
        return value
    if dtype.is_integer:
        if not isinstance(value, int) or not dtype.min <= value <= dtype.max:
            raise type_error()
        return value
    raise InvalidArgument(
        f"Conversion of JSON Value: {show_json(value)} to type: {_dtype_name(dtype)} is not supported"
    )


def _dense_shape(value: Any) -> list[int]:
    """The shape a nested list claims, read along its first elements (checked against all of them later)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(
    value: Any, level: int, shape: list[int], dtype: tf.DType, out: list, name: str, budget: TensorBudget
) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise InvalidArgument(
                f"JSON Value: {show_json(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        out.append(_scalar(value, dtype, name, budget))
        return
    if level >= len(shape):
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out, name, budget)


def json_to_array(value: Any, dtype: tf.DType, *, name: str, budget: TensorBudget) -> np.ndarray:
    """One tensor in its natural nested-list form (or a scalar) to an array of the signature's dtype.

    The shape read along the first elements is charged to the budget before any value is converted; a list
    of another length is refused as soon as it is reached, so the conversion never outgrows that shape.
    """
    shape = _dense_shape(value)
    budget.take_elements(name, shape)
    flat: list = []
    _fill(value, 0, shape, dtype, flat, name, budget)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    array = np.empty(len(flat), dtype=np_dtype)
    array[:] = flat
    return array.reshape(shape)


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _rows_to_arrays(
    instances: list, specs: dict[str, tf.TensorSpec], budget: TensorBudget
) -> dict[str, np.ndarray]:
    if len(specs) > 1 and not _is_named_object(instances[0]):
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    named = _is_named_object(instances[0])
    columns: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    for index, item in enumerate(instances):
        if not named:
            if _is_named_object(item):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            key = next(iter(specs))
            try:
                _add_instance_item(item, key, specs[key].dtype, columns[key], budget)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: {status_text(exc)}"
                ) from None
            continue
        if not _is_named_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for key, value in item.items():
            try:
                if key not in specs:
                    raise InvalidArgument(f"JSON object: does not have named input: {key}")
                _add_instance_item(value, key, specs[key].dtype, columns[key], budget)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. Error: "
                    f"{status_text(exc)}"
                ) from None
        if set(item) != set(specs):
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. JSON object: {show_json(item)} "
                f"keys must be equal to: {','.join(sorted(specs))}"
            )
    return {key: np.stack(values) for key, values in columns.items()}


def status_text(error: InvalidArgument) -> str:
    """An error as absl::Status::ToString() writes it: TF Serving quotes an instance's error that way."""
    return f"INVALID_ARGUMENT: {error.message}"


def _add_instance_item(
    value: Any, name: str, dtype: tf.DType, column: list[np.ndarray], budget: TensorBudget
) -> None:
    """One instance's value for one input: every instance must give the same shape (the batch is stacked)."""
    array = json_to_array(value, dtype, name=name, budget=budget)
    if column and column[0].size != array.size:
        raise InvalidArgument(f"Expecting tensor size: {column[0].size} but got: {array.size}")
    if column and column[0].shape != array.shape:
        raise InvalidArgument(f"Expecting shape {list(column[0].shape)} but got: {list(array.shape)}")
    column.append(array)


def _columns_to_arrays(
    inputs: Any, specs: dict[str, tf.TensorSpec], budget: TensorBudget
) -> dict[str, np.ndarray]:
    if not _is_named_object(inputs):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        key = next(iter(specs))
        return {key: json_to_array(inputs, specs[key].dtype, name=key, budget=budget)}
    arrays = {}
    for key, spec in specs.items():
        if key not in inputs:
            raise InvalidArgument(f"Missing named input: {key} in 'inputs' object.")
        arrays[key] = json_to_array(inputs[key], spec.dtype, name=key, budget=budget)
    return arrays


def decode_predict_inputs(
    doc: dict, specs: dict[str, tf.TensorSpec], budget: TensorBudget
) -> tuple[Format, dict[str, np.ndarray]]:
    """The request's tensors, keyed by input alias, in the signature's dtypes, within the request's budget."""
    if not specs:
        raise InvalidArgument("Failed to get input map for signature")
    if "instances" in doc and "inputs" in doc:
        raise InvalidArgument(
            # json_tensor.cc ends this one with a space.
            f"JSON Value: {show_json(doc)} Not formatted correctly expecting only one of 'inputs' or 'instances' "
            "keys to exist "
        )
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {show_json(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {show_json(doc)} No values in 'instances' array")
        budget.check_rows(len(instances), "'instances'")
        return Format.ROW, _rows_to_arrays(instances, specs, budget)
    if "inputs" in doc:
        return Format.COLUMNAR, _columns_to_arrays(doc["inputs"], specs, budget)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# -- responses ----------------------------------------------------------------------------------


def array_to_json(name: str, array: np.ndarray) -> Any:
    """Nested lists as TF Serving writes them: shortest round-trip floats, bytes as b64 for *_bytes."""
    if array.dtype == object or array.dtype.kind == "S":
        if name.endswith(BYTES_SUFFIX):
            encode = np.vectorize(lambda b: {B64_KEY: base64.b64encode(b).decode()}, otypes=[object])
        else:
            encode = np.vectorize(lambda b: b.decode("utf-8", errors="replace"), otypes=[object])
        return encode(array).tolist()
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        # float32 0.1 is 0.10000000149 as a double; its shortest decimal form is what TF Serving prints.
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def encode_predict_outputs(outputs: dict[str, np.ndarray], fmt: Format) -> dict:
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    values = {name: array_to_json(name, array) for name, array in outputs.items()}
    if fmt is Format.COLUMNAR:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = 0
    for name, array in outputs.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if array.shape[0] < 1:
            raise InvalidArgument(f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
        if batch and array.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(batch)]}


def dumps(doc: dict) -> bytes:
    # NaN and Infinity are written bare, as TF Serving does (its docs call this out for clients).
    return json.dumps(doc, allow_nan=True).encode()


# -- model status and metadata ------------------------------------------------------------------


# Tensor::AsProtoField's value field per dtype: TF Serving's Predict answers with these, not tensor_content,
# and clients read them directly (`response.outputs["scores"].float_val`).
_VALUE_FIELDS = {
    np.float32: "float_val",
    np.float64: "double_val",
    np.int64: "int64_val",
    np.bool_: "bool_val",
    np.int32: "int_val",
    np.int16: "int_val",
    np.int8: "int_val",
    np.uint8: "int_val",
    np.uint16: "int_val",
    np.uint32: "uint32_val",
    np.uint64: "uint64_val",
}


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    field = _VALUE_FIELDS.get(array.dtype.type)
    if field is None:  # strings (string_val) and the rest
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(
        dtype=tf.as_dtype(array.dtype).as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto()
    )
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def model_spec(name: str, version: int, signature_name: str = "") -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(name=name, version=Int64Value(value=version), signature_name=signature_name)


def status_response(states: list[VersionState]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for state in states:
        entry = response.model_version_status.add(version=state.version)
        if state.available:
            entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            entry.status.SetInParent()  # error_code OK, error_message ""
        else:
            # Unloaded versions end in END with an OK status, versions that failed to load with their error.
            entry.state = get_model_status_pb2.ModelVersionStatus.END
            entry.status.SetInParent()
            if state.error:
                entry.status.error_code = 2  # tensorflow.error.Code UNKNOWN
                entry.status.error_message = state.error
    return response


def metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_spec(servable.name, servable.version)
    )
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
    return MessageToDict(response, always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """TF Serving prints model_spec and the unpacked SignatureDefMap side by side (not the Any)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures)
    options = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    return {
        "model_spec": MessageToDict(response.model_spec, **options),
        "metadata": {SIGNATURE_DEF_FIELD: MessageToDict(signatures, **options)},
    }
