"""bfloat16 for a float32 model's compute-bound part on CPUs that multiply it fast (Intel AMX): the one way the
torch services do it (ASR's encoder through `ASR_ENCODER_DTYPE`, its vocabulary projection through
`ASR_HEAD_DTYPE`).

Only a module that runs once per request on long inputs gains: a Whisper encoder multiplies 1,500 positions per
30 s window, where AMX's bfloat16 tiles ran 3x float32 (whisper-base on 2 Sapphire Rapids cores: 395 -> 119 ms
per window). A vocabulary projection gains too, for another reason: it is read whole at every decoding step,
and half the bytes take half the time (Whisper's 51,865 x 512 head for 8 rows: 10.3 -> 2.1 ms). The
module's weights are converted in place and its floating-point inputs cast to bfloat16 on the way in; its
outputs are cast back to the caller's dtype on the way out, or left in bfloat16 for consumers that run in it.

`auto` measures instead of guessing from CPU flags: one layer of the module runs on a sample input in both
dtypes at start-up, and bfloat16 is kept only when it is at least `MIN_SPEEDUP` faster (CPUs without bfloat16
matrix units run it slower than float32). GPUs keep the model's own dtype (half precision there already).
"""

import copy
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers.utils import ModelOutput

log = logging.getLogger(__name__)

ComputeDtype = Literal["auto", "float32", "bfloat16"]

# bfloat16 must pay for its rounding: below this speed-up a CPU keeps float32.
MIN_SPEEDUP = 1.2


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """`value` with its floating-point tensors cast to `dtype`: a tensor, a model output, a tuple or list of
    them (what a module's forward takes and returns); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, ModelOutput):
        for key, item in value.items():
            value[key] = cast_floats(item, dtype)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(cast_floats(item, dtype) for item in value)
    return value


def run_in_dtype(
    module: torch.nn.Module, dtype: torch.dtype, output_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Convert `module`'s weights to `dtype` in place and cast the floating-point tensors it is given to `dtype`;
    with `output_dtype`, what it gives back is cast to that (its other hooks, earlier or later ones, then see
    `output_dtype`), else left in `dtype` (for a consumer that runs in `dtype` too: no cast there and back).
    Weights it shares with another module (an output projection tied to the input embeddings) are untied: the
    module gets its own converted copy and the other keeps its dtype."""
    for owner in module.modules():
        for name, parameter in list(owner.named_parameters(recurse=False)):
            if parameter.is_floating_point():
                converted = parameter.detach().to(dtype)
                setattr(owner, name, torch.nn.Parameter(converted, requires_grad=parameter.requires_grad))

    def cast_inputs(_module, args, kwargs):
        return cast_floats(args, dtype), {key: cast_floats(value, dtype) for key, value in kwargs.items()}

    module.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    if output_dtype is not None:
        module.register_forward_hook(lambda _module, _args, output: cast_floats(output, output_dtype), prepend=True)
    return module


def seconds_per_call(call: Callable[[], Any], repeats: int = 2) -> float:
    """The best of `repeats` timed calls, after one untimed call (allocations, kernel selection)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


@torch.inference_mode()
def bfloat16_speedup(layer: torch.nn.Module, sample: tuple) -> float:
    """How many times faster a bfloat16 copy of `layer` runs `sample` (its positional inputs) than `layer`."""
    lowered = copy.deepcopy(layer).to(torch.bfloat16)
    lowered_sample = cast_floats(sample, torch.bfloat16)
    float_seconds = seconds_per_call(lambda: layer(*sample))
    lowered_seconds = seconds_per_call(lambda: lowered(*lowered_sample))
    return float_seconds / lowered_seconds


def resolve_compute_dtype(
    setting: ComputeDtype,
    device: torch.device,
    model_dtype: torch.dtype,
    speedup: Callable[[], float],
    name: str,
) -> torch.dtype:
    """The dtype a module runs in for a `<P>..._DTYPE` setting: bfloat16 only on a CPU with a float32 model,
    with `auto` asking `speedup()` (a measurement) whether it pays."""
    lowerable = device.type == "cpu" and model_dtype == torch.float32
    if setting == "bfloat16" and not lowerable:
        log.info("%s: bfloat16 is for float32 models on CPU; ignored on %s (%s kept)", name, device, model_dtype)
    if setting == "float32" or not lowerable:
        return model_dtype
    if setting == "bfloat16":
        return torch.bfloat16
    measured = speedup()
    chosen = torch.bfloat16 if measured >= MIN_SPEEDUP else torch.float32
    log.info("%s: bfloat16 measured %.2fx float32's speed here; running in %s", name, measured, chosen)
    return chosen
