"""bfloat16 for a float32 model's compute-bound part (services/kit/precision.py): what runs in it, what its callers
and its other hooks see, and when a setting asks for it."""

import torch
from transformers.modeling_outputs import BaseModelOutput

from services.kit.precision import bfloat16_speedup, cast_floats, resolve_compute_dtype, run_in_dtype

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_cast_floats_casts_float_tensors_wherever_a_forward_puts_them():
    ids = torch.tensor([1, 2, 3])
    output = BaseModelOutput(last_hidden_state=torch.ones(2, 3), hidden_states=(torch.ones(1), torch.ones(2)))
    cast = cast_floats((torch.zeros(2), ids, None, [torch.zeros(1)], output), torch.bfloat16)
    assert cast[0].dtype == torch.bfloat16 and cast[3][0].dtype == torch.bfloat16
    assert cast[1] is ids and cast[2] is None  # integer tensors and non-tensors as they are
    assert cast[4].last_hidden_state.dtype == torch.bfloat16
    assert [h.dtype for h in cast[4].hidden_states] == [torch.bfloat16] * 2


def test_a_lowered_module_takes_float32_and_answers_in_the_dtype_asked_for():
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    expected = reference(x)
    seen = []
    lowered = torch.nn.Linear(64, 32)
    lowered.load_state_dict(reference.state_dict())
    lowered.register_forward_hook(lambda module, args, output: seen.append(output.dtype))  # an earlier hook
    run_in_dtype(lowered, torch.bfloat16, torch.float32)
    got = lowered(x)
    assert lowered.weight.dtype == torch.bfloat16
    assert got.dtype == torch.float32 and seen == [torch.float32]
    assert torch.allclose(got, expected, atol=0.05)  # bfloat16's rounding, not another computation
    assert not torch.equal(got, expected)

    kept = run_in_dtype(torch.nn.Linear(64, 32), torch.bfloat16)  # no output dtype: stays bfloat16
    assert kept(x).dtype == torch.bfloat16
    assert kept(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_a_weight_shared_with_another_module_is_untied_and_the_other_keeps_its_dtype():
    embedding = torch.nn.Embedding(100, 16)
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = embedding.weight  # tied, as a language model's output projection often is
    run_in_dtype(head, torch.bfloat16, torch.float32)
    assert head.weight.dtype == torch.bfloat16 and embedding.weight.dtype == torch.float32
    hidden = embedding(torch.tensor([[1, 2]]))
    assert hidden.dtype == torch.float32 and head(hidden).dtype == torch.float32


def test_a_setting_comes_to_bfloat16_only_for_a_float32_model_on_a_cpu():
    def never() -> float:
        raise AssertionError("measured where the setting decides alone")

    assert resolve_compute_dtype("float32", CPU, torch.float32, never, "x") == torch.float32
    assert resolve_compute_dtype("bfloat16", CPU, torch.float32, never, "x") == torch.bfloat16
    # GPUs and half-precision models keep their own dtype, whatever is asked.
    for setting in ("auto", "bfloat16", "float32"):
        assert resolve_compute_dtype(setting, GPU, torch.float16, never, "x") == torch.float16
        assert resolve_compute_dtype(setting, CPU, torch.float16, never, "x") == torch.float16


def test_auto_keeps_bfloat16_only_where_it_measured_faster_enough():
    assert resolve_compute_dtype("auto", CPU, torch.float32, lambda: 3.0, "x") == torch.bfloat16
    assert resolve_compute_dtype("auto", CPU, torch.float32, lambda: 1.2, "x") == torch.bfloat16
    assert resolve_compute_dtype("auto", CPU, torch.float32, lambda: 1.1, "x") == torch.float32
    assert resolve_compute_dtype("auto", CPU, torch.float32, lambda: 0.4, "x") == torch.float32


def test_the_speedup_is_measured_on_a_copy():
    layer = torch.nn.Linear(16, 16)
    speedup = bfloat16_speedup(layer, (torch.randn(4, 16),))
    assert speedup > 0
    assert layer.weight.dtype == torch.float32
