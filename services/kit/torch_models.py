"""Device, dtype and weight loading for the torch services (imported only by them: the TF service
image has no torch)."""

import logging
import os
from pathlib import Path

import torch

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


class TorchRuntime:
    """The device and dtype a service settled on at start-up."""

    def __init__(self, device: str = "auto", dtype: str = "auto", threads: int | None = None):
        configure_threads(threads)
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        log.info("running on %s with %s", self.device, self.dtype)

    def load(self, cls, model: str | os.PathLike, **kwargs):
        """`cls.from_pretrained` in eval mode on the chosen device, from safetensors only."""
        source = resolve_source(model)
        instance = cls.from_pretrained(source, **pretrained_kwargs(self.dtype), **kwargs)
        return instance.to(self.device).eval()
