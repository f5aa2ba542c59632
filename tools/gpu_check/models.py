"""Random-weight checkpoints at the sizes the services run in production (tools/tiny_models/sizes.py: REAL).

Nothing is downloaded: tools/tiny_models' builders run at a real size, so the tokenizers are the tiny models'
hand-written ones padded with filler pieces to the real vocabulary sizes (embedding and output-projection
shapes are real and every generated id decodes to text). `build_models(out_dir, REAL, device, dtype)` writes
safetensors checkpoints in the Hub layout and returns the service settings that point at them; the services
load them through their normal `from_pretrained` path.
"""

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from tools.tiny_models.asr import build_whisper
from tools.tiny_models.imagegen import build_stable_diffusion
from tools.tiny_models.sizes import Sizes
from tools.tiny_models.translation import build_pair
from tools.tiny_models.tts import build_speecht5


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _reported(what: str, sizes: Sizes) -> Iterator[None]:
    started = time.perf_counter()
    yield
    _free_accelerator_memory()
    print(f"built {what} ({sizes.name} sizes) in {time.perf_counter() - started:.1f} s", flush=True)


def build_models(
    out_dir: Path, sizes: Sizes, device: str = "cpu", dtype: torch.dtype = torch.float16
) -> dict:
    """Build every torch service's models under `out_dir` (weights initialised on `device`, saved in `dtype`);
    returns the service settings (environment variables) that point at them."""
    pairs = {
        f"{src}-{tgt}": out_dir / "translation" / f"wmt19-{src}-{tgt}" for src, tgt in sizes.translation_pairs
    }
    asr = {"main": out_dir / "asr" / "whisper", "assistant": out_dir / "asr" / "whisper-assistant"}
    tts = {name: out_dir / "tts" / name for name in ("tts", "vc", "vocoder", "voices")}
    imagegen = out_dir / "imagegen" / "stable-diffusion"
    with torch.device(device):
        for seed, ((src, tgt), model_dir) in enumerate(
            zip(sizes.translation_pairs, pairs.values(), strict=True)
        ):
            with _reported(f"translation {src}-{tgt}", sizes):
                build_pair(model_dir, src, tgt, seed, sizes, dtype)
        with _reported("asr", sizes):
            build_whisper(asr["main"], asr["assistant"], sizes, dtype)
        with _reported("tts", sizes):
            build_speecht5(tts, sizes, dtype)
        with _reported("imagegen", sizes):
            build_stable_diffusion(imagegen, sizes, dtype)
    return {
        "TRANSLATION_MODELS": json.dumps({pair: str(path) for pair, path in pairs.items()}),
        "ASR_MODEL": str(asr["main"]),
        "ASR_ASSISTANT_MODEL": str(asr["assistant"]),
        "TTS_MODEL": str(tts["tts"]),
        "TTS_VC_MODEL": str(tts["vc"]),
        "TTS_VOCODER": str(tts["vocoder"]),
        "TTS_VOICES_DIR": str(tts["voices"]),
        "IMAGEGEN_MODEL": str(imagegen),
    }
