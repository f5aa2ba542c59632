"""The request bounds without a server: JSON structure read unparsed, TensorProto declarations, image headers."""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from services.kit.errors import InvalidArgument
from services.vit import limits
from services.vit.settings import ViTSettings
from tests.vit import image_bombs

LIMITS = limits.RequestLimits.from_settings(ViTSettings())
SMALL = limits.RequestLimits(
    max_elements=100,
    max_string_bytes=1000,
    max_json_depth=4,
    max_json_elements=50,
    max_image_side=100,
    max_image_pixels=5000,
    max_rows=10,
)


def structure_error(body: bytes, bounds: limits.RequestLimits = SMALL) -> str | None:
    try:
        limits.check_json_structure(body, bounds)
    except InvalidArgument as exc:
        return exc.message
    return None


@pytest.mark.parametrize(
    "text",
    [
        "[[[[" * 10,  # brackets inside a string
        'a \\" [[[[[[[[ \\" still inside',  # escaped quotes do not end it
        "ends in a backslash \\\\",  # an escaped backslash before the closing quote
        '\\\\" [[[[[[[[[[',  # two backslashes, then a quote: escapes in a row
    ],
)
def test_brackets_inside_strings_are_not_nesting(text):
    body = json.dumps({"instances": [[text]]}).encode()
    assert json.loads(body)["instances"][0][0] == text
    assert structure_error(body) is None


def test_depth_and_values_are_bounded_outside_strings():
    assert structure_error(b"[[[[0]]]]") is None
    assert "nests deeper than 4 levels (VIT_MAX_JSON_DEPTH)" in structure_error(b"[[[[[0]]]]]")
    assert "nests deeper than 4 levels" in structure_error(b'{"a": {"b": {"c": {"d": {"e": 1}}}}}')
    assert structure_error(json.dumps(list(range(45))).encode()) is None
    assert "more than 50 values (VIT_MAX_JSON_ELEMENTS)" in structure_error(json.dumps(list(range(60))).encode())
    # Object keys are objects the parser makes too.
    keys = json.dumps({f"k{i}": 0 for i in range(30)}).encode()
    assert "more than 50 values" in structure_error(keys)


def test_strings_spanning_scan_chunks_keep_their_parity():
    # A string that starts in one 1 MiB chunk and ends in the next, full of brackets on both sides.
    text = "x" * ((1 << 20) - 20) + "[" * 100
    body = json.dumps({"instances": [text, text]}).encode()
    assert structure_error(body, LIMITS) is None
    assert "nests deeper" in structure_error(body[:-2] + b", " + b"[" * 70 + b"]" * 70 + b"]}", LIMITS)


def test_json_that_is_not_utf8_is_refused():
    assert "not UTF-8" in structure_error(json.dumps({"instances": [1]}).encode("utf-16"))


def string_tensor(shape, values):
    proto = tf.make_tensor_proto(values, dtype=tf.string)
    del proto.tensor_shape.dim[:]
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_tensor_declarations_within_the_budget_pass_and_convert():
    for proto in [
        tf.make_tensor_proto(np.zeros((2, 5), np.float32)),  # tensor_content
        tf.make_tensor_proto(5.0, shape=[3]),  # TensorFlow's fill form: one value for three elements
        string_tensor([4], [b"ab"]),
    ]:
        limits.check_tensor_proto("x", proto, limits.TensorBudget(SMALL))
        assert tf.make_ndarray(proto).size == np.prod([d.size for d in proto.tensor_shape.dim])


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (string_tensor([101], [b"a"]), "shape [101] holds 101 elements; a request may hold at most 100"),
        (string_tensor([2**40, 2**40], [b"a"]), f"holds {2**80} elements"),
        (string_tensor([2, -3], [b"a"]), "negative dimension"),
        (string_tensor([2], [b"a", b"b", b"c"]), "3 values for shape [2], which holds 2"),
        (string_tensor([10], [b"a" * 101]), "string values reach 1010 bytes"),
        (tf.make_tensor_proto(np.zeros(4, np.float32)), None),
    ],
    ids=["elements", "beyond-int64", "negative", "extra-values", "filled-bytes", "content-length"],
)
def test_tensor_declarations_over_the_budget_are_refused(proto, message):
    if message is None:  # tensor_content that does not match its shape
        proto.tensor_shape.dim[0].size = 5
        message = "tensor_content holds 16 bytes; shape [5] of float32 needs 20"
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        limits.check_tensor_proto("x", proto, limits.TensorBudget(SMALL))


def test_the_element_budget_is_shared_by_a_request_s_inputs():
    budget = limits.TensorBudget(SMALL)
    budget.take_elements("a", [60])
    with pytest.raises(InvalidArgument, match=r"input b: shape \[50\] holds 50 elements \(110 with the inputs"):
        budget.take_elements("b", [50])


@pytest.mark.parametrize("fmt", image_bombs.FORMATS)
def test_image_headers_are_read_raw_and_as_base64_text(fmt):
    data = image_bombs.claiming(fmt, 60000, 40000)
    for value in (data, base64.b64encode(data), base64.urlsafe_b64encode(data).rstrip(b"=")):
        claim = limits.image_claim(limits._image_bytes(value))
        assert (claim.format, claim.width, claim.height) == (fmt, 60000, 40000)
        with pytest.raises(InvalidArgument, match=f"input s\\[1\\]: {fmt} image of 60000x40000 pixels"):
            limits.check_image_headers("s", np.array([image_bombs.tiny(fmt), value], dtype=object), SMALL)


def test_strings_that_are_not_images_pass_untouched():
    values = np.array([b"plain words", b"QUJD", b"", base64.b64encode(b"no image here")], dtype=object)
    limits.check_image_headers("s", values, SMALL)


def test_gif_frames_count_not_just_the_screen():
    claim = limits.image_claim(image_bombs.gif_frames((8, 8), [(8, 8), (90, 90)]))
    assert (claim.width, claim.height, claim.pixels, claim.longest_side) == (8, 8, 8164, 90)
    with pytest.raises(InvalidArgument, match="whose frames hold 8164 pixels, 90 on their longest side"):
        limits.check_image_headers("s", np.array([image_bombs.gif_frames((8, 8), [(8, 8), (90, 90)])]), SMALL)
