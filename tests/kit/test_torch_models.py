"""The kit's few-row linear kernel (the same layer, computed another way for decoding-sized inputs) and the stop
signal that frees a decoding loop once its requests are cancelled."""

import asyncio
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, StoppingCriteriaList

from services.kit.batcher import Work
from services.kit.errors import Cancelled
from services.kit.torch_models import FewRowLinear, StopWhenCancelled, TorchRuntime, use_few_row_linears


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
    # A vocabulary-sized head switches; a layer below FEW_ROW_MIN_ELEMENTS keeps torch's kernel (faster there).
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(512, 51865), torch.nn.Linear(512, 2048))
    model = runtime.tune_for_decoding(model)
    assert (type(model[0]) is FewRowLinear) is enabled
    assert type(model[1]) is torch.nn.Linear
    half = TorchRuntime("cpu", "bfloat16").tune_for_decoding(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert type(half[0]) is torch.nn.Linear


# -- StopWhenCancelled: generate() ends within a step of the last request being cancelled ----------------------

MAX_NEW_TOKENS = 40


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_work(loop, deadline: float | None = None) -> Work:
    return Work(payload=None, key=None, enqueued_at=time.monotonic(), deadline=deadline,
                _future=loop.create_future(), _loop=loop)


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=128, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=1, pad_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.suppress_tokens = [1]  # never end early: only the length or a stop ends a row
    return model


def count_steps(model, on_step) -> list[int]:
    steps = [0]

    def hook(module, args, output):
        steps[0] += 1
        on_step(steps[0])

    return steps, model.transformer.register_forward_hook(hook)


def test_rows_stop_only_once_every_work_is_cancelled(loop):
    first, second = make_work(loop), make_work(loop)
    stop = StopWhenCancelled([first, second])
    ids = torch.zeros(6, 3, dtype=torch.long)
    assert stop(ids, None).tolist() == [False] * 6
    first._future.cancel()  # what the batcher does when a client goes away
    assert stop(ids, None).tolist() == [False] * 6
    stop.check()
    second.deadline = time.monotonic() - 1  # a passed deadline counts too
    assert stop(ids, None).tolist() == [True] * 6
    with pytest.raises(Cancelled):
        stop.check()


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=1, do_sample=False),
        dict(num_beams=1, do_sample=True),
        dict(num_beams=4, num_return_sequences=3, early_stopping=True),
    ],
    ids=["greedy", "sampling", "beams"],
)
@pytest.mark.parametrize("with_criterion", [True, False])
def test_generate_stops_within_a_step_of_the_cancel(tiny_lm, loop, options, with_criterion):
    works = [make_work(loop), make_work(loop)]
    cancel_at = 5

    def on_step(step):
        if step == cancel_at:
            for work in works:
                work._future.cancel()

    steps, handle = count_steps(tiny_lm, on_step)
    criteria = StoppingCriteriaList([StopWhenCancelled(works)] if with_criterion else [])
    try:
        output = tiny_lm.generate(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3),
                                  max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=criteria, **options)
    finally:
        handle.remove()
    assert output.shape[0] == 2 * options.get("num_return_sequences", 1)
    if with_criterion:
        assert steps[0] <= cancel_at + 1
    else:  # the control: nothing else ends these rows before the length limit
        assert steps[0] == MAX_NEW_TOKENS


def test_a_live_request_keeps_the_batch_decoding(tiny_lm, loop):
    gone, waiting = make_work(loop), make_work(loop)
    gone._future.cancel()
    steps, handle = count_steps(tiny_lm, lambda step: None)
    try:
        tiny_lm.generate(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3),
                         max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=[StopWhenCancelled([gone, waiting])])
    finally:
        handle.remove()
    assert steps[0] == MAX_NEW_TOKENS


def test_checked_before_stops_a_loop_without_stopping_criteria(loop):
    work = make_work(loop)
    layer = torch.nn.Linear(2, 2)
    calls = 0
    with pytest.raises(Cancelled), StopWhenCancelled([work]).checked_before(layer):
        for calls in range(1, 100):
            if calls == 3:
                work._future.cancel()
            layer(torch.zeros(1, 2))
    assert calls == 3
    layer(torch.zeros(1, 2))  # the hook is gone once the block ends
