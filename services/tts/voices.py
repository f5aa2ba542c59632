"""Named voices: one speaker x-vector per `<name>.npy` file in a directory, plus aliases.

SpeechT5 conditions on a speaker embedding (512-dim x-vectors in the released checkpoints, e.g. the CMU
ARCTIC ones); a deployment adds voices by dropping such files into the directory and restarting.

OpenAI clients name OpenAI's voices (alloy, ash, ...). Each of them that is not an installed voice is an
alias of one: the configured mapping first, then the remaining names spread over the installed voices in
name order (round-robin), so the same voices directory always gives the same mapping.
"""

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from services.kit.errors import InvalidArgument

log = logging.getLogger(__name__)

# The built-in voices of OpenAI's speech API, in the order its SDK lists them.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip


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


def voice_aliases(installed: list[str], configured: Mapping[str, str]) -> dict[str, str]:
    """Alias -> installed voice: the configured ones, then every OpenAI voice name still unmapped."""
    for alias, voice in configured.items():
        if alias in installed:
            raise ValueError(f"voice alias {alias!r} has the name of an installed voice; rename the alias")
        if voice not in installed:
            raise ValueError(f"voice alias {alias!r} maps to {voice!r}, which is not installed: {installed}")
    aliases = dict(configured)
    unmapped = [name for name in OPENAI_VOICES if name not in installed and name not in aliases]
    for position, name in enumerate(unmapped):
        aliases[name] = installed[position % len(installed)]
    return aliases


class VoiceBank:
    def __init__(
        self, directory: Path, dim: int, default: str | None = None, aliases: Mapping[str, str] | None = None
    ):
        files = sorted(Path(directory).glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"no voices (*.npy) in {directory}")
        # allow_pickle=False: a voice file is data, never code.
        self.voices = {
            f.stem: check_embedding(np.load(f, allow_pickle=False), dim, f"voice file {f}") for f in files
        }
        self.aliases = voice_aliases(self.names(), aliases or {})
        default = default or self.names()[0]
        self.default = self.aliases.get(default, default)
        if self.default not in self.voices:
            raise ValueError(
                f"default voice {default!r} is not among the voices in {directory}: {self.names()}"
            )
        log.info(
            "voices from %s: %s (default %s); aliases: %s",
            directory,
            ", ".join(self.voices),
            self.default,
            ", ".join(f"{alias}={voice}" for alias, voice in self.aliases.items()),
        )

    def names(self) -> list[str]:
        return list(self.voices)

    def resolve(self, name: str | None) -> str:
        """The installed voice a request's voice name selects."""
        if not name:
            return self.default
        if name in self.voices:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise InvalidArgument(
            f"voice: unknown voice {name!r}; available: {', '.join(self.voices)}, "
            f"or an alias of one: {', '.join(self.aliases)} (GET /v1/voices)",
            field="voice",
        )

    def get(self, name: str | None) -> np.ndarray:
        return self.voices[self.resolve(name)]
