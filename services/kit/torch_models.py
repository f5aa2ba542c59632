"""Device, dtype and weight loading for the torch services (imported only by them: the TF service
image has no torch), and the stop signal for their decoding loops."""

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import StoppingCriteria

from .batcher import Work
from .errors import Cancelled

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available")
    return device


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # fp16 halves memory and uses tensor cores on GPU; CPU kernels are fastest (and exact) in fp32.
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, float16 or bfloat16")
    return dtype


def configure_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def resolve_source(model: str | os.PathLike) -> str:
    """A local directory when one exists at that path, else the string as a Hub id.

    With HF_HUB_OFFLINE=1 a Hub id resolves from the local cache only, so a missing model fails
    fast with the library's own message instead of hanging on the network.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or str(model).startswith("."):
        raise FileNotFoundError(f"model directory {model} does not exist")
    return str(model)


def pretrained_kwargs(dtype: torch.dtype) -> dict:
    """Safetensors only (nothing is unpickled) and never remote code."""
    return {"use_safetensors": True, "dtype": dtype}


class FewRowLinear(torch.nn.Linear):
    """`nn.Linear` that computes inputs of a few rows (autoregressive decoding: one token per sequence, a few
    draft tokens, a few beams) as `weight @ x.T`.

    For such inputs the weight is read once from memory and the product is bound by memory bandwidth, but the
    x86 CPU kernels torch picks for `x @ weight.T` with few rows re-pack the whole weight on every call (and a
    single row goes to a slow matrix-vector kernel): on 2 AMD EPYC cores Whisper's 51,865 x 512 output
    projection takes 11.6 ms for 1 row and 24.5 ms for 6 rows that way, 3.1 and 6.0 ms this way
    (bench/bench_asr_real.py). Same weights and math; only the order of the float sums differs (results agree
    to about 1e-6). Larger inputs, and any other device or dtype, take the stock path.
    """

    max_rows = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 0 < rows <= self.max_rows or x.device.type != "cpu" or x.dtype != torch.float32:
            return super().forward(x)
        columns = x.reshape(rows, x.shape[-1])
        if rows == 1:
            columns = columns.repeat(2, 1)  # two columns keep it off the slower matrix-vector kernel
        if self.bias is None:
            out = torch.mm(self.weight, columns.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, columns.t())
        return out[:, :rows].t().contiguous().view(*x.shape[:-1], self.out_features)


# Only vocabulary-sized projections gain: on 2 EPYC cores Whisper's 512 x 51,865 head ran 0.65x (1 row) and
# 0.46x (6 rows) of torch's time, while layers up to 4M weights (attention, feed-forward of base-sized models)
# ran 1.0-1.6x, i.e. slower (a medium FSMT served 0.8x LitServe's throughput with every layer switched).
FEW_ROW_MIN_ELEMENTS = 16 * 1024 * 1024


def use_few_row_linears(model: torch.nn.Module, enabled: bool = True, min_elements: int = 0) -> int:
    """Switch the model's plain `nn.Linear` layers with at least `min_elements` weights to `FewRowLinear` in
    place (weights, ties and state dict unchanged), or back with `enabled=False`; returns how many were
    switched."""
    source, target = (torch.nn.Linear, FewRowLinear) if enabled else (FewRowLinear, torch.nn.Linear)
    switched = 0
    for module in model.modules():
        if type(module) is source and (not enabled or module.weight.numel() >= min_elements):
            module.__class__ = target
            switched += 1
    return switched


class TorchRuntime:
    """The device and dtype a service settled on at start-up."""

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        few_row_linears: bool = True,
    ):
        configure_threads(threads)
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        self.few_row_linears = few_row_linears
        log.info("running on %s with %s", self.device, self.dtype)

    def load(self, cls, model: str | os.PathLike, **kwargs):
        """`cls.from_pretrained` in eval mode on the chosen device, from safetensors only."""
        source = resolve_source(model)
        instance = cls.from_pretrained(source, **pretrained_kwargs(self.dtype), **kwargs)
        return instance.to(self.device).eval()

    def tune_for_decoding(self, model: torch.nn.Module) -> torch.nn.Module:
        """Faster few-row vocabulary projections (`FewRowLinear`) for autoregressive decoding on a CPU in fp32; a
        no-op elsewhere (GPU kernels handle few rows well)."""
        if self.few_row_linears and self.device.type == "cpu" and self.dtype == torch.float32:
            use_few_row_linears(model, min_elements=FEW_ROW_MIN_ELEMENTS)
        return model


class StopWhenCancelled(StoppingCriteria):
    """Frees the model thread within one decoding step once nobody waits for any request of a batch.

    As a `generate(stopping_criteria=[...])` entry it marks every row done once EVERY work is cancelled (client
    gone, deadline passed, server stopping): greedy and sampled decoding end at that step, and beam search
    (which asks about its `batch x 2 x num_beams` candidate rows) finds no running beam left to continue. While
    one request is still waited for, the batch decodes on unchanged. Loops that take no stopping criteria
    (Whisper's 30 s windows, SpeechT5's spectrogram steps) call `check` or use `checked_before` instead: they
    are left by raising `Cancelled`. Each look at the works also counts as the batch's liveness beat.
    """

    def __init__(self, works: Iterable[Work]):
        self.works = tuple(works)

    @property
    def all_cancelled(self) -> bool:
        return all(work.cancelled for work in self.works)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.all_cancelled, dtype=torch.bool, device=input_ids.device)

    def check(self, *_) -> None:
        """Raise `Cancelled` once every work is cancelled; takes (and ignores) any arguments, so that it can be
        a callback such as Whisper's `monitor_progress`."""
        if self.all_cancelled:
            raise Cancelled(f"all {len(self.works)} requests of the batch were cancelled")

    @contextlib.contextmanager
    def checked_before(self, module: torch.nn.Module) -> Iterator[None]:
        """`check` before every forward of `module` (one decoding step of a loop without stopping criteria)."""
        handle = module.register_forward_pre_hook(self.check)
        try:
            yield
        finally:
            handle.remove()
