"""TF Serving's JSON tensor encoding, without a server: what a request turns into and how outputs print."""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from services.kit.errors import InvalidArgument
from services.vit import schemas
from services.vit.limits import RequestLimits, TensorBudget
from services.vit.settings import ViTSettings

LIMITS = RequestLimits.from_settings(ViTSettings())


def decode(doc, specs):
    return schemas.decode_predict_inputs(doc, specs, TensorBudget(LIMITS))

FLOAT_X = {"x": tf.TensorSpec([None], tf.float32)}
TWO_INPUTS = {"tag": tf.TensorSpec([None], tf.string), "signal": tf.TensorSpec([None, 3], tf.int32)}


def test_row_format_stacks_instances_into_a_batch():
    fmt, arrays = decode(
        {"instances": [{"tag": "foo", "signal": [1, 2, 3]}, {"tag": {"b64": "AP8="}, "signal": [4, 5, 6]}]},
        TWO_INPUTS,
    )
    assert fmt is schemas.Format.ROW
    assert arrays["tag"].tolist() == [b"foo", b"\x00\xff"]
    assert arrays["signal"].dtype == np.int32 and arrays["signal"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_columnar_format_keeps_each_input_whole():
    fmt, arrays = decode(
        {"inputs": {"tag": ["a"], "signal": [[1, 2, 3]] * 4}}, TWO_INPUTS
    )
    assert fmt is schemas.Format.COLUMNAR
    assert arrays["signal"].shape == (4, 3) and arrays["tag"].shape == (1,)
    # A lone b64 object is the single input's value, not an object of named inputs.
    _, arrays = decode(
        {"inputs": {"b64": "QUJD"}}, {"image": tf.TensorSpec([], tf.string)}
    )
    assert arrays["image"] == np.array(b"ABC", dtype=object)


def test_b64_accepts_missing_padding_and_rejects_url_safe_alphabet():
    spec = {"s": tf.TensorSpec([None], tf.string)}
    _, arrays = decode({"instances": [{"b64": "QUI"}]}, spec)
    assert arrays["s"].tolist() == [b"AB"]
    with pytest.raises(InvalidArgument, match="Unable to base64 decode"):
        decode(
            {"instances": [{"b64": base64.urlsafe_b64encode(b"\xfb\xff").decode()}]}, spec
        )


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        ([1, [2]], tf.int32, "Encountered list at unexpected level: 1 expected < 1"),
        ([[1], 2], tf.int32, "JSON Value: 2 found at incorrect level"),
        ([[1, 2], [3]], tf.int32, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ([1.5], tf.int32, "is not of expected type: int32"),
        ([True], tf.float32, "Type: True is not of expected type: float"),
        ([300], tf.uint8, "is not of expected type: uint8"),
        ([1e39], tf.float32, "without loss of precision"),
        ([16777217], tf.float32, "without loss of precision"),
        ([1], tf.bool, "is not of expected type: bool"),
        ([None], tf.string, "Type: Null"),
    ],
)
def test_values_that_do_not_fit_the_tensor_are_refused(value, dtype, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        schemas.json_to_array(value, dtype, name="x", budget=TensorBudget(LIMITS))


def test_nan_and_infinity_are_accepted_and_written_back():
    doc = schemas.parse_json(b'{"instances": [NaN, Infinity, -Infinity, 1e-3]}', LIMITS)
    _, arrays = decode(doc, FLOAT_X)
    text = schemas.dumps(schemas.encode_predict_outputs({"y": arrays["x"]}, schemas.Format.ROW)).decode()
    assert text == '{"predictions": [NaN, Infinity, -Infinity, 0.001]}'


def test_outputs_print_like_tf_serving():
    outputs = {
        "score": np.array([0.1, 2.0], np.float32),
        "label": np.array([b"cat", b"dog"], dtype=object),
        "thumbnail_bytes": np.array([b"\x89PNG", b"\xff"], dtype=object),
    }
    row = schemas.encode_predict_outputs(outputs, schemas.Format.ROW)
    assert row["predictions"][0] == {"score": 0.1, "label": "cat", "thumbnail_bytes": {"b64": "iVBORw=="}}
    columnar = schemas.encode_predict_outputs({"score": outputs["score"]}, schemas.Format.COLUMNAR)
    assert json.loads(schemas.dumps(columnar)) == {"outputs": [0.1, 2.0]}
    with pytest.raises(InvalidArgument, match="has no shape information"):
        schemas.encode_predict_outputs({"total": np.array(3.0, np.float32)}, schemas.Format.ROW)
    with pytest.raises(InvalidArgument, match="inconsistent batch size"):
        schemas.encode_predict_outputs({"a": np.zeros(2), "b": np.zeros(3)}, schemas.Format.ROW)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b'{"instances": [1,', "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        (b'{"signature_name": 3, "instances": [1]}', "'signature_name' key must be a string value"),
    ],
)
def test_malformed_bodies(body, message):
    with pytest.raises(InvalidArgument, match=message):
        doc = schemas.parse_json(body, LIMITS)
        schemas.signature_name(doc)


def test_every_rest_error_body_is_a_plain_message():
    assert schemas.error_body(InvalidArgument("bad")) == {"error": "bad"}
