"""Named voices: one speaker x-vector per `<name>.npy` file in a directory.

SpeechT5 conditions on a speaker embedding (512-dim x-vectors in the released checkpoints, e.g. the CMU
ARCTIC ones); a deployment adds voices by dropping such files into the directory and restarting.
"""

import logging
from pathlib import Path

import numpy as np

from services.kit.errors import InvalidArgument

log = logging.getLogger(__name__)


def check_embedding(vector, dim: int, field: str) -> np.ndarray:
    """A float32 vector of the model's speaker-embedding size with finite, not all-zero values."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.size != dim:
        raise InvalidArgument(f"{field}: expected {dim} values, got {array.size}", field=field)
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{field}: values must be finite numbers", field=field)
    if not array.any():
        raise InvalidArgument(f"{field}: must not be all zeros", field=field)
    return array


class VoiceBank:
    def __init__(self, directory: Path, dim: int, default: str | None = None):
        files = sorted(Path(directory).glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"no voices (*.npy) in {directory}")
        # allow_pickle=False: a voice file is data, never code.
        self.voices = {
            f.stem: check_embedding(np.load(f, allow_pickle=False), dim, f"voice file {f}") for f in files
        }
        self.default = default or next(iter(self.voices))
        if self.default not in self.voices:
            raise ValueError(
                f"default voice {self.default!r} is not among the voices in {directory}: {self.names()}"
            )
        log.info("voices from %s: %s (default %s)", directory, ", ".join(self.voices), self.default)

    def names(self) -> list[str]:
        return list(self.voices)

    def get(self, name: str | None) -> np.ndarray:
        if not name:
            return self.voices[self.default]
        if name not in self.voices:
            raise InvalidArgument(
                f"voice: unknown voice {name!r}; available: {', '.join(self.voices)}", field="voice"
            )
        return self.voices[name]
