"""Long audio cut at silences into <= 30 s chunks of speech, decoded together (OpenAI's `chunking_strategy`).

Whisper decodes long audio one 30 s window after another and invents text over silence. Here Silero VAD
(`vad.py`) finds the speech first and everything else is dropped: each stretch of speech, padded, becomes a
piece, and the pieces are packed in order into as few chunks of at most 30 s as possible, cut at the longest
pauses (a chunk is its pieces end to end: the pauses between them are left out too). The chunks are decoded
together by the runner's plain batched path (assisted decoding takes one sequence at a time) and their
transcripts joined in order, with segment and word timestamps mapped back to the original audio. Audio without
speech is never decoded: its transcript is empty. The VAD costs about 3-5 ms of one core per second of audio.

API for the service (what `chunking_strategy` wires into):

    options = chunking_options(request.chunking_strategy)   # None (absent: no chunking) | "auto" | dict or
                                                             # its JSON text; bad values -> InvalidArgument
    if options is not None:
        transcript = transcribe_chunked(runner, job, options, stop=StopWhenCancelled([work]))

`transcribe_chunked(runner, job, options, *, vad=None, stop=None, batch_size=None) -> Transcript` takes the request's
`ASRJob` as it would be queued (audio, `DecodeOptions`, language, words, logprobs) and returns the `Transcript`
the runner would, for the whole audio: `text` the chunks' texts joined, `duration` the whole audio's, `segments`
(with `DecodeOptions.timestamps`) and `words` (with `ASRJob.words`) on the original timeline, `logprobs` in
order, `path` "plain". Caveats: without a language each chunk detects its own and the transcript reports the one
most of the speech had (no speech at all: the job's language, else "en"); `tokens` concatenates each chunk's ids,
whose timestamp tokens count from that chunk's start; `stream` jobs get no per-window deltas (send the text
when it returns). At most `batch_size` chunks (default: the runner's `max_batch_size`) are decoded in one
generate() call, which bounds memory for the longest uploads: each chunk is a full 30 s row for Whisper.

Lower-level pieces: `find_chunks(audio, options)` -> `[Chunk]`, `plan_chunks(speech segments, num_samples,
options)`, `Chunk.audio(audio)` and `Chunk.to_original(seconds)`.

Options (`ChunkingOptions`) map from OpenAI's `server_vad` fields: `threshold` (speech probability, 0-1),
`prefix_padding_ms` (audio kept before each stretch of speech) and `silence_duration_ms` (a pause at least this
long ends a stretch of speech; shorter pauses stay inside it). A stretch also keeps `suffix_padding_ms` after it
(so that word endings the detector scores low survive), and stretches shorter than `min_speech_duration_ms` are
dropped. "auto" is the defaults: 0.5, 300 ms, 500 ms.
"""

import bisect
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from services.kit.errors import InvalidArgument
from services.kit.json_limits import json_shape_error
from services.kit.torch_models import StopWhenCancelled

from .domain import SAMPLE_RATE, ASRJob, DecodingPath, Transcript
from .settings import ASRSettings
from .vad import SileroVad, SpeechSegment, VadOptions, default_vad

FIELD = "chunking_strategy"
# Written without spaces between words: chunk texts are joined directly.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})


@dataclass(frozen=True)
class ChunkingOptions:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    suffix_padding_ms: int = 300
    min_speech_duration_ms: int = 250
    max_chunk_s: float = 30.0  # Whisper's window

    def __post_init__(self):
        if self.prefix_padding_ms < 0 or self.suffix_padding_ms < 0:
            raise ValueError("padding must not be negative")
        # Room must be left for speech in every chunk.
        if (self.prefix_padding_ms + self.suffix_padding_ms) / 1000 >= self.max_chunk_s / 2:
            raise ValueError(f"padding must total less than {self.max_chunk_s / 2:g} s")

    @property
    def max_chunk_samples(self) -> int:
        return int(self.max_chunk_s * SAMPLE_RATE)

    def vad_options(self) -> VadOptions:
        """Speech stretches that still fit a chunk once padded; the padding is added here, not by the VAD."""
        padding_s = (self.prefix_padding_ms + self.suffix_padding_ms) / 1000
        return VadOptions(
            threshold=self.threshold,
            min_speech_duration_ms=self.min_speech_duration_ms,
            min_silence_duration_ms=self.silence_duration_ms,
            speech_pad_ms=0,
            max_speech_duration_s=self.max_chunk_s - padding_s,
        )


AUTO = ChunkingOptions()
# OpenAI's server_vad fields, with the largest value each may take.
SERVER_VAD_LIMITS = {"threshold": 1.0, "prefix_padding_ms": 5000, "silence_duration_ms": 10000}
# Its JSON text's elements (strings, commas, the object) with room to spare for fields refused by name.
STRATEGY_JSON_ELEMENTS = 64


def chunking_options(strategy: str | Mapping | None) -> ChunkingOptions | None:
    """OpenAI's `chunking_strategy`: absent -> None (decode the audio whole), "auto" -> the defaults,
    {"type": "server_vad", "threshold": ..., "prefix_padding_ms": ..., "silence_duration_ms": ...} (or that
    object as JSON text, as a multipart form carries it) -> those settings, the rest defaulted."""
    if strategy is None:
        return None
    if isinstance(strategy, str):
        text = strategy.strip()
        if text == "auto":
            return AUTO
        if not text.startswith("{"):
            raise InvalidArgument(
                f'{FIELD}: expected "auto" or a server_vad object, got {strategy[:50]!r}', field=FIELD
            )
        # A server_vad object is flat and small: bounded before parsing, so deep nesting is a 400, not a
        # RecursionError.
        if problem := json_shape_error(text.encode(), max_depth=1, max_elements=STRATEGY_JSON_ELEMENTS):
            raise InvalidArgument(f"{FIELD}: {problem}", field=FIELD)
        try:
            strategy = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{FIELD}: not valid JSON ({exc.msg})", field=FIELD) from None
    if not isinstance(strategy, Mapping):
        raise InvalidArgument(f'{FIELD}: expected "auto" or a server_vad object', field=FIELD)
    if strategy.get("type") != "server_vad":
        raise InvalidArgument(f'{FIELD}.type: must be "server_vad"', field=FIELD)
    unknown = sorted(set(strategy) - {"type", *SERVER_VAD_LIMITS})
    if unknown:
        raise InvalidArgument(f"{FIELD}: unknown field(s) {', '.join(map(str, unknown))[:200]}", field=FIELD)
    values = {}
    for name, upper in SERVER_VAD_LIMITS.items():
        if strategy.get(name) is not None:
            values[name] = _number(name, strategy[name], upper, integer=name != "threshold")
    return replace(AUTO, **values)


def _number(name: str, value, upper: float, *, integer: bool) -> float | int:
    problem = f"{FIELD}.{name}: expected {'an integer' if integer else 'a number'} from 0 to {upper:g}"
    if isinstance(value, bool):
        raise InvalidArgument(problem, field=FIELD)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(problem, field=FIELD) from None
    if not (math.isfinite(number) and 0 <= number <= upper) or (integer and not number.is_integer()):
        raise InvalidArgument(problem, field=FIELD)
    return int(number) if integer else number


@dataclass(frozen=True)
class Chunk:
    """Stretches of the original audio, in order and apart, decoded as one clip of their concatenation."""

    pieces: tuple[tuple[int, int], ...]  # (start, end) samples of the original audio, end exclusive

    @property
    def start(self) -> int:
        return self.pieces[0][0]

    @property
    def samples(self) -> int:
        return sum(end - start for start, end in self.pieces)

    def audio(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([audio[start:end] for start, end in self.pieces])

    def to_original(self, seconds: float, *, end: bool = False) -> float:
        """A time in the chunk's audio -> the same instant in the original audio. A time on the seam of two
        pieces is the start of the later one, or with `end` the end of the earlier one."""
        position = min(max(seconds, 0.0) * SAMPLE_RATE, self.samples)
        seams = self._seams
        index = bisect.bisect_left(seams, position) if end else bisect.bisect_right(seams, position)
        index = min(index, len(self.pieces) - 1)
        before = seams[index - 1] if index else 0
        return (self.pieces[index][0] + position - before) / SAMPLE_RATE

    @property
    def _seams(self) -> list[int]:
        """Chunk-audio sample at which each piece ends."""
        ends, total = [], 0
        for start, end in self.pieces:
            total += end - start
            ends.append(total)
        return ends


def plan_chunks(
    segments: list[SpeechSegment], num_samples: int, options: ChunkingOptions = AUTO
) -> list[Chunk]:
    """Speech segments (in order) -> as few chunks of at most `max_chunk_s` as possible, preferring cuts at the
    longest pauses. Each segment is padded (never beyond the audio or into its neighbour), silence between
    padded segments is dropped, and a segment too long for one chunk is split evenly."""
    prefix = options.prefix_padding_ms * SAMPLE_RATE // 1000
    suffix = options.suffix_padding_ms * SAMPLE_RATE // 1000
    limit = options.max_chunk_samples
    pieces: list[list[int]] = []
    pauses: list[int] = []  # silence before each piece, original samples
    for segment in segments:
        start, end = max(0, segment.start - prefix), min(num_samples, segment.end + suffix)
        if end <= start:
            continue
        if pieces and start <= pieces[-1][1]:
            pieces[-1][1] = max(pieces[-1][1], end)
            continue
        pauses.append(start - pieces[-1][1] if pieces else 0)
        pieces.append([start, end])
    # The VAD already caps segment length; this makes the bound hold whatever segments are given.
    split: list[tuple[int, int]] = []
    split_pauses: list[int] = []
    for (start, end), pause in zip(pieces, pauses, strict=True):
        parts = -(-(end - start) // limit)
        bounds = [start + (end - start) * k // parts for k in range(parts + 1)]
        split.extend(zip(bounds[:-1], bounds[1:], strict=True))
        split_pauses.extend([pause] + [0] * (parts - 1))
    return [Chunk(tuple(split[i:j])) for i, j in _fewest_chunks(split, split_pauses, limit)]


def _fewest_chunks(pieces: list[tuple[int, int]], pauses: list[int], limit: int) -> list[tuple[int, int]]:
    """Index ranges grouping consecutive pieces into chunks of at most `limit` samples: fewest chunks, then the
    most silence at the cuts."""
    # best[j]: (chunks, -silence at cuts) covering pieces[:j], and where its last chunk starts
    best: list[tuple[tuple[int, int], int]] = [((0, 0), 0)]
    for j in range(1, len(pieces) + 1):
        length, choice = 0, None
        for i in range(j - 1, -1, -1):
            length += pieces[i][1] - pieces[i][0]
            if length > limit:
                break
            (count, score), _ = best[i]
            candidate = (count + 1, score - (pauses[i] if i else 0))
            if choice is None or candidate < choice[0]:
                choice = (candidate, i)
        best.append(choice)
    ranges, j = [], len(pieces)
    while j:
        i = best[j][1]
        ranges.append((i, j))
        j = i
    return ranges[::-1]


def find_chunks(
    audio: np.ndarray, options: ChunkingOptions = AUTO, vad: SileroVad | None = None
) -> list[Chunk]:
    """The chunks of speech in 16 kHz mono audio; [] when there is none."""
    segments = (vad or default_vad()).speech_segments(audio, options.vad_options())
    return plan_chunks(segments, len(audio), options)


class PlainTranscriber(Protocol):
    """What chunking needs of the runner: its batch size and its batched decoding."""

    settings: ASRSettings

    def transcribe(
        self, jobs: list[ASRJob], path: DecodingPath, *, stop: StopWhenCancelled | None = None
    ) -> list[Transcript]: ...


def transcribe_chunked(
    runner: PlainTranscriber,
    job: ASRJob,
    options: ChunkingOptions = AUTO,
    *,
    vad: SileroVad | None = None,
    stop: StopWhenCancelled | None = None,
    batch_size: int | None = None,
) -> Transcript:
    """The job's transcript from its speech alone: chunks decoded in batches of up to `batch_size` by the plain
    path, joined in order on the original timeline (see the module docstring)."""
    chunks = find_chunks(job.audio, options, vad)
    batch_size = batch_size or runner.settings.max_batch_size
    parts: list[Transcript] = []
    for first in range(0, len(chunks), batch_size):
        if stop is not None:
            stop.check()
        jobs = [
            replace(job, audio=chunk.audio(job.audio), decoding="plain", stream=False)
            for chunk in chunks[first : first + batch_size]
        ]
        parts.extend(runner.transcribe(jobs, "plain", stop=stop))
    return _joined(job, chunks, parts)


def _joined(job: ASRJob, chunks: list[Chunk], parts: list[Transcript]) -> Transcript:
    if parts:
        spoken = Counter()
        for chunk, part in zip(chunks, parts, strict=True):
            spoken[part.language] += chunk.samples
        language = spoken.most_common(1)[0][0]
    else:
        language = job.language or "en"
    separator = "" if language in UNSPACED_LANGUAGES else " "
    segments = [] if job.options.timestamps else None
    words = [] if job.words else None
    logprobs = [] if job.logprobs else None
    for chunk, part in zip(chunks, parts, strict=True):
        if segments is not None:
            seek = chunk.start * 100 // SAMPLE_RATE  # mel frames (100 a second) before the chunk
            segments.extend(
                replace(segment, **_span(chunk, segment.start, segment.end), seek=segment.seek + seek)
                for segment in part.segments or ()
            )
        if words is not None:
            words.extend(replace(word, **_span(chunk, word.start, word.end)) for word in part.words or ())
        if logprobs is not None:
            logprobs.extend(part.logprobs or ())
    return Transcript(
        text=separator.join(part.text for part in parts if part.text),
        language=language,
        duration=job.duration,
        path="plain",
        tokens=tuple(token for part in parts for token in part.tokens),
        segments=segments,
        words=words,
        logprobs=logprobs,
    )


def _span(chunk: Chunk, start: float, end: float) -> dict[str, float]:
    """A span of the chunk's audio on the original timeline (a span ending on a seam keeps its piece's end)."""
    start = chunk.to_original(start)
    return {"start": round(start, 2), "end": round(max(chunk.to_original(end, end=True), start), 2)}
