"""Dynamic int8 quantization of a torch model's linear layers on CPU: the one way the torch services do it
(main models through `<P>QUANTIZE`, ASR's draft through `ASR_DRAFT_QUANTIZE`).

Weights are stored as int8 with one scale per output row (per-channel: a vocabulary head's rows differ in
scale), activations are quantized on the fly per call; a quarter of fp32's weight bytes per decoding step.
GPUs keep their float kernels (half precision is cheap there already), so there the setting is ignored.
"""

import logging
import warnings
from collections.abc import Iterable
from typing import Literal

import torch

log = logging.getLogger(__name__)

Quantize = Literal["int8", "none", "auto"]


def resolve_quantization(setting: Quantize, device: torch.device, auto_int8: bool) -> Literal["int8", "none"]:
    """What a `<P>QUANTIZE` setting comes to on `device`: int8 only on a CPU, where `auto` means the service's
    measured default (`auto_int8`)."""
    wanted = setting == "int8" or (setting == "auto" and auto_int8)
    if wanted and device.type != "cpu":
        if setting == "int8":
            log.info("int8 quantization is for CPUs only: ignored on %s (float weights kept)", device)
        return "none"
    return "int8" if wanted else "none"


def quantize_linears(model: torch.nn.Module, keep: Iterable[torch.nn.Module] = ()) -> torch.nn.Module:
    """Swap `model`'s stock `nn.Linear` layers (a bare `nn.Linear` included) for dynamic int8 ones, in place
    except for a bare layer, whose int8 copy is returned. Layers in `keep` stay float; so do subclasses of
    `nn.Linear` (the kit's `FewRowLinear`: switch to it after quantizing). CPU only: a quantized layer has no
    GPU kernel."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    kept = {id(module) for module in keep}
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and id(module) not in kept
    }
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao (not a dependency); it works in
        # the pinned torch.
        warnings.simplefilter("ignore")
        if isinstance(model, torch.nn.Linear):
            # quantize_dynamic swaps children only: give the bare layer a parent.
            return quantize_dynamic(
                torch.nn.Sequential(model), {"0": per_channel_dynamic_qconfig}, torch.qint8
            )[0]
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def is_int8_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
