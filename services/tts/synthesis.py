"""What the whole-request runner (runner.py) and the continuous decode loop (continuous.py) share: the jobs and
their results, how a job's sentences are grouped into generate calls, and the steps around the decoder (length
bounds, time stretch, vocoder, emitting sentences in text order). No web code, no model loading.

Batch keys: unseeded requests share `SHARED_BATCH`; seeded speech requests share `SEEDED_BATCH` and each makes
its calls alone (see runner.py, Randomness); a seeded conversion is a batch key of its own.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from services.kit.batcher import Work
from services.kit.torch_models import TorchRuntime

from .metrics import AUDIO_SECONDS, REAL_TIME_FACTOR

SHARED_BATCH = "shared"  # batch key of unseeded speech requests and of unseeded conversions
SEEDED_BATCH = "seeded"  # batch key of seeded speech requests: whole-request, each in calls of its own


@dataclass(frozen=True)
class Sentence:
    text: str
    token_ids: tuple[int, ...]


@dataclass(eq=False)
class SpeechJob:
    sentences: tuple[Sentence, ...]
    speaker: np.ndarray
    speed: float = 1.0
    seed: int | None = None
    stream: bool = False

    @property
    def batch_key(self) -> Hashable:
        return SHARED_BATCH if self.seed is None else SEEDED_BATCH

    def rounds(self) -> list[list[int]]:
        """Sentence indices per synthesis round."""
        indices = list(range(len(self.sentences)))
        if (self.stream or self.seed is not None) and len(indices) > 1:
            return [indices[:1], indices[1:]]
        return [indices]


@dataclass(eq=False)  # compares by identity: a seeded job is a batch key no other job equals
class ConversionJob:
    samples: np.ndarray  # mono float32 at the feature extractor's rate
    speaker: np.ndarray
    seed: int | None = None

    @property
    def batch_key(self) -> Hashable:
        return self if self.seed is not None else SHARED_BATCH


@dataclass(frozen=True)
class SentenceAudio:
    """Emitted to streaming callers as each sentence is ready; includes the pause before it."""

    index: int
    text: str
    samples: np.ndarray


@dataclass(frozen=True)
class AudioResult:
    samples: np.ndarray  # mono float32
    sample_rate: int
    compute_seconds: float

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate


# -- grouping sentences into generate calls -----------------------------------------------------------------


def row_order(job: SpeechJob, index: int) -> tuple[int, int]:
    """Streaming sentences first and in text order, so that every call extends what can be sent;
    seeded ones in text order too (the same calls streamed or not); the rest by length (less padding)."""
    if job.stream or job.seed is not None:
        return (0, index)
    return (1, len(job.sentences[index].token_ids))


def solo_calls(job: SpeechJob, max_rows_per_call: int) -> list[list[int]]:
    """Sentence indices per generate call, in order, when the job runs alone."""
    calls = []
    for sentences in job.rounds():
        ordered = sorted(sentences, key=lambda index: row_order(job, index))
        calls.extend(
            ordered[start : start + max_rows_per_call] for start in range(0, len(ordered), max_rows_per_call)
        )
    return calls


# -- around the decoder ---------------------------------------------------------------------------------------


def length_ratios(model, encoder_length: int, min_ratio: float, max_ratio: float) -> tuple[float, float]:
    """The configured ratios, lowered where they would decode past the model's last speech position
    (generate_speech does not check, and fails with a shape error there)."""
    reduction = model.config.reduction_factor
    max_ratio = min(max_ratio, (model.config.max_speech_positions - 1) * reduction / encoder_length)
    return min(min_ratio, max_ratio), max_ratio


def max_frames(model, encoder_length: int, max_len_ratio: float) -> int:
    """Frames `generate_speech` would allow this row alone (it decodes reduction_factor frames a step)."""
    reduction = model.config.reduction_factor
    return max(1, int(encoder_length * max_len_ratio / reduction)) * reduction


def speaker_rows(speakers: Sequence[np.ndarray], runtime: TorchRuntime) -> torch.Tensor:
    """The speakers' embeddings as one tensor on the model's device, one row each."""
    return torch.from_numpy(np.stack(speakers)).to(runtime.device, runtime.dtype)


def stretch(spectrogram: torch.Tensor, speed: float) -> torch.Tensor:
    """The spectrogram in `1 / speed` of its time: the duration changes, the pitch does not."""
    if speed == 1.0:
        return spectrogram
    frames = max(1, round(spectrogram.shape[0] / speed))
    return F.interpolate(spectrogram.T[None], size=frames, mode="linear", align_corners=True)[0].T


def vocode(vocoder, spectrograms: list[torch.Tensor], speeds: Sequence[float]) -> list[np.ndarray]:
    """One vocoder call: a waveform per spectrogram, each stretched to its speed first."""
    stretched = [stretch(spectrogram, speed) for spectrogram, speed in zip(spectrograms, speeds, strict=True)]
    batch = torch.nn.utils.rnn.pad_sequence(stretched, batch_first=True)
    waveforms = vocoder(batch)
    hop = waveforms.shape[1] // batch.shape[1]  # samples per spectrogram frame (256 for HiFi-GAN)
    return [
        waveforms[row, : frames.shape[0] * hop].float().cpu().numpy() for row, frames in enumerate(stretched)
    ]


def emit_in_order(
    work: Work, ready: dict[int, np.ndarray], parts: list[np.ndarray], pause_ms: float, sample_rate: int
) -> None:
    """Move the sentences of `ready` that continue `parts` there, each after a pause (none before the first),
    and emit each to the work's streaming caller."""
    job: SpeechJob = work.payload
    while len(parts) in ready:
        index = len(parts)
        samples = ready.pop(index)
        if index > 0:
            pause = np.zeros(round(pause_ms / 1000 * sample_rate / job.speed))
            samples = np.concatenate([pause.astype(np.float32), samples])
        parts.append(samples)
        work.emit(SentenceAudio(index, job.sentences[index].text, samples))


def observe(task: str, result: AudioResult) -> None:
    """Count the audio made and how fast it was made."""
    AUDIO_SECONDS.labels(task).inc(result.duration)
    if result.duration > 0:
        REAL_TIME_FACTOR.labels(task).observe(result.compute_seconds / result.duration)
