"""The kit's int8 quantization: which layers become dynamic int8 ones, what stays float, and where the setting
is ignored."""

import logging

import pytest
import torch

from services.kit.quantize import is_int8_linear, quantize_linears, resolve_quantization
from services.kit.torch_models import use_few_row_linears


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))


def test_linear_layers_become_per_channel_int8_and_answer_close_to_float():
    model = _model()
    x = torch.randn(5, 64)
    expected = model(x)
    quantize_linears(model)
    assert is_int8_linear(model[0]) and is_int8_linear(model[2])
    weight = model[0].weight()
    assert weight.dtype == torch.qint8 and weight.qscheme() == torch.per_channel_affine
    assert torch.allclose(model(x), expected, atol=0.05)


def test_kept_layers_and_few_row_linears_stay_float():
    model = _model()
    use_few_row_linears(model[2])
    quantize_linears(model, keep=[model[0]])
    assert type(model[0]) is torch.nn.Linear
    assert not is_int8_linear(model[2]) and model[2].weight.dtype == torch.float32


def test_a_bare_linear_gets_an_int8_copy():
    layer = torch.nn.Linear(16, 8)
    quantized = quantize_linears(layer)
    assert is_int8_linear(quantized) and type(layer) is torch.nn.Linear


@pytest.mark.parametrize(
    ("setting", "device", "auto_int8", "expected"),
    [
        ("int8", "cpu", False, "int8"),
        ("none", "cpu", True, "none"),
        ("auto", "cpu", True, "int8"),
        ("auto", "cpu", False, "none"),
        ("int8", "cuda", True, "none"),
        ("auto", "cuda", True, "none"),
    ],
)
def test_int8_only_on_cpu_and_auto_as_measured(setting, device, auto_int8, expected):
    assert resolve_quantization(setting, torch.device(device), auto_int8) == expected


def test_int8_asked_for_on_a_gpu_says_it_is_ignored(caplog):
    with caplog.at_level(logging.INFO, logger="services.kit.quantize"):
        resolve_quantization("int8", torch.device("cuda"), False)
    assert "ignored on cuda" in caplog.text
