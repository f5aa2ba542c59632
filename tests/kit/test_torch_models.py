"""The kit's few-row linear kernel: the same layer, computed another way for decoding-sized inputs."""

import pytest
import torch

from services.kit.torch_models import FewRowLinear, TorchRuntime, use_few_row_linears


def _pair(bias: bool) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    stock = torch.nn.Linear(96, 300, bias=bias)
    few_row = torch.nn.Linear(96, 300, bias=bias)
    few_row.load_state_dict(stock.state_dict())
    assert use_few_row_linears(few_row) == 1
    return stock, few_row


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (2, 3, 96), (1, 7, 96), (64, 96), (4, 0, 96)])
def test_few_row_inputs_give_the_stock_layers_output(bias, shape):
    stock, few_row = _pair(bias)
    x = torch.randn(*shape)
    expected, got = stock(x), few_row(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Callers reshape the output with .view (attention heads): it must be a plain contiguous tensor.
    got.view(-1)


def test_many_rows_and_other_dtypes_take_the_stock_kernel_exactly():
    stock, few_row = _pair(bias=True)
    many = torch.randn(65, 96)
    assert torch.equal(few_row(many), stock(many))
    stock64, few_row64 = stock.double(), few_row.double()
    one = torch.randn(1, 96, dtype=torch.float64)
    assert torch.equal(few_row64(one), stock64(one))


def test_switching_keeps_weights_ties_and_state_dict():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = embed.weight  # tied, as in Whisper's proj_out
    model = torch.nn.ModuleDict({"embed": embed, "hidden": torch.nn.Linear(16, 16), "head": head})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_few_row_linears(model) == 2
    assert type(model["head"]) is FewRowLinear and model["head"].weight is model["embed"].weight
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert use_few_row_linears(model) == 0, "already switched layers are left alone"
    assert use_few_row_linears(model, enabled=False) == 2
    assert type(model["head"]) is torch.nn.Linear and model["head"].weight is model["embed"].weight


@pytest.mark.parametrize("enabled", [True, False])
def test_runtime_tunes_cpu_float32_models_only_when_enabled(enabled):
    runtime = TorchRuntime("cpu", "float32", few_row_linears=enabled)
    model = runtime.tune_for_decoding(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert (type(model[0]) is FewRowLinear) is enabled
    half = TorchRuntime("cpu", "bfloat16").tune_for_decoding(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert type(half[0]) is torch.nn.Linear
