"""Voice activity detection with Silero VAD's ONNX model, run by onnxruntime: where is there speech in 16 kHz audio?

    vad = SileroVad()                                   # or default_vad(): one shared instance per process
    segments = vad.speech_segments(audio, VadOptions(threshold=0.5, min_silence_duration_ms=500))
    # [SpeechSegment(start=16000, end=83200), ...]  sample positions, end exclusive

The model is `silero_vad/data/silero_vad.onnx` from the `silero-vad` wheel, read as package data: the TorchScript
file beside it is never loaded, so nothing is unpickled. The wheel's own Python (torch-based) is not imported.

The model is a streaming one: each call takes one 512-sample window (32 ms) prefixed by the last 64 samples of
the window before it, plus the recurrent state the previous call returned, and gives the probability that the
window is speech. `speech_probabilities` runs it over the audio window by window (a fixed 576-sample buffer and
a float per window); `segments_from_probabilities` is silero's `get_speech_timestamps` state machine over those
probabilities: speech starts at a window at or above `threshold` and ends after `min_silence_duration_ms` below
`threshold - 0.15`; segments shorter than `min_speech_duration_ms` are dropped, those longer than
`max_speech_duration_s` are cut at their longest inner pause (or hard, when there is none), and every segment
is widened by `speech_pad_ms` on each side without overlapping its neighbours.
"""

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples the 16 kHz model classifies per call
CONTEXT = 64  # samples of the previous window the model sees before each window
STATE_SHAPE = (2, 1, 128)


@dataclass(frozen=True)
class VadOptions:
    """silero's `get_speech_timestamps` parameters, with its defaults."""

    threshold: float = 0.5  # speech probability at or above which speech starts
    min_speech_duration_ms: int = 250  # shorter segments are dropped
    min_silence_duration_ms: int = 100  # silence that ends a segment
    speech_pad_ms: int = 30  # added on each side of every segment
    max_speech_duration_s: float = math.inf  # longer segments are cut
    neg_threshold: float | None = None  # probability below which speech may end; None = threshold - 0.15
    min_silence_at_max_speech_ms: int = 98  # pauses this long are candidate cuts for over-long segments

    def __post_init__(self):
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be from 0 to 1, got {self.threshold}")
        if min(self.min_speech_duration_ms, self.min_silence_duration_ms, self.speech_pad_ms) < 0:
            raise ValueError("durations must not be negative")
        if not self.max_speech_duration_s > 0:
            raise ValueError(f"max_speech_duration_s must be positive, got {self.max_speech_duration_s}")


@dataclass(frozen=True)
class SpeechSegment:
    start: int  # first sample
    end: int  # one past the last sample

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE, self.end / SAMPLE_RATE


def model_path() -> Path:
    """silero_vad.onnx inside the installed silero-vad package, found without importing the package (its
    __init__ imports torch and sets torch's thread count)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed (pip install 'modelserve[asr]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise RuntimeError(f"silero-vad is installed but {path} is missing")
    return path


def missing() -> str | None:
    """Why voice-activity detection cannot run here (None: it can). Both packages come with the asr extra; a
    leaner install (the GPU check's wheels) serves everything else without them."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    if importlib.util.find_spec("silero_vad") is None:
        return "the silero-vad package is not installed"
    return None


class SileroVad:
    """One ONNX session; `speech_probabilities` keeps its recurrent state per call, so threads may share it."""

    def __init__(self, path: Path | None = None):
        import onnxruntime  # optional, see `missing`

        options = onnxruntime.SessionOptions()
        # One window is a few thousand multiply-adds: more threads would only add synchronisation, and the
        # cores belong to Whisper.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path or model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def speech_probabilities(self, audio: np.ndarray) -> np.ndarray:
        """One speech probability per 512-sample window of 16 kHz mono audio (the last window zero-padded)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be one channel (1-D), got shape {audio.shape}")
        windows = -(-audio.size // WINDOW)
        probabilities = np.empty(windows, dtype=np.float32)
        frame = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)  # [previous window's tail | window]
        state = np.zeros(STATE_SHAPE, dtype=np.float32)
        for i in range(windows):
            frame[0, :CONTEXT] = frame[0, -CONTEXT:]
            window = audio[i * WINDOW : (i + 1) * WINDOW]
            frame[0, CONTEXT : CONTEXT + window.size] = window
            frame[0, CONTEXT + window.size :] = 0.0
            output, state = self.session.run(None, {"input": frame, "state": state, "sr": self._rate})
            probabilities[i] = output[0, 0]
        return probabilities

    def speech_segments(self, audio: np.ndarray, options: VadOptions = VadOptions()) -> list[SpeechSegment]:
        """Where there is speech in 16 kHz mono float audio, in order."""
        return segments_from_probabilities(self.speech_probabilities(audio), len(audio), options)


@functools.cache
def default_vad() -> SileroVad:
    """The process's shared detector, loaded on first use."""
    return SileroVad()


def segments_from_probabilities(
    probabilities: np.ndarray, num_samples: int, options: VadOptions = VadOptions()
) -> list[SpeechSegment]:
    """silero's speech-timestamp state machine (utils_vad.get_speech_timestamps_from_probs, 16 kHz, with its
    default of cutting over-long speech at the longest pause)."""
    rate = SAMPLE_RATE
    threshold = options.threshold
    neg_threshold = options.neg_threshold
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    min_speech = rate * options.min_speech_duration_ms / 1000
    pad = rate * options.speech_pad_ms / 1000
    max_speech = rate * options.max_speech_duration_s - WINDOW - 2 * pad
    min_silence = rate * options.min_silence_duration_ms / 1000
    min_silence_at_max = rate * options.min_silence_at_max_speech_ms / 1000

    spans: list[list[int]] = []  # [start, end] while being built
    start: int | None = None  # of the segment in progress
    temp_end = 0  # where the current pause began (0: not in a pause)
    prev_end = next_start = 0
    pauses: list[tuple[int, int]] = []  # (start, length) of pauses inside the segment in progress

    for i, probability in enumerate(probabilities.tolist()):
        sample = WINDOW * i
        if probability >= threshold and temp_end:
            pause = sample - temp_end
            if pause > min_silence_at_max:
                pauses.append((temp_end, pause))
            temp_end = 0
            if next_start < prev_end:
                next_start = sample

        if probability >= threshold and start is None:
            start = sample
            continue

        if start is not None and sample - start > max_speech:
            if pauses:
                prev_end, pause = max(pauses, key=lambda p: p[1])
                spans.append([start, prev_end])
                next_start = prev_end + pause
                # Still silent after the cut: the next segment waits for speech; else it has begun.
                start = next_start if next_start < prev_end + sample else None
                prev_end = next_start = temp_end = 0
                pauses = []
            else:  # no pause to cut at: cut here
                spans.append([start, sample])
                start = None
                prev_end = next_start = temp_end = 0
                pauses = []
                continue

        if probability < neg_threshold and start is not None:
            if not temp_end:
                temp_end = sample
            if sample - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                spans.append([start, temp_end])
            start = None
            prev_end = next_start = temp_end = 0
            pauses = []

    if start is not None and num_samples - start > min_speech:
        spans.append([start, num_samples])

    for i, span in enumerate(spans):
        if i == 0:
            span[0] = int(max(0, span[0] - pad))
        if i == len(spans) - 1:
            span[1] = int(min(num_samples, span[1] + pad))
            continue
        gap = spans[i + 1][0] - span[1]
        if gap < 2 * pad:  # a short gap is split between the two
            span[1] += int(gap // 2)
            spans[i + 1][0] = int(max(0, spans[i + 1][0] - gap // 2))
        else:
            span[1] = int(min(num_samples, span[1] + pad))
            spans[i + 1][0] = int(max(0, spans[i + 1][0] - pad))
    return [SpeechSegment(s, e) for s, e in spans]
