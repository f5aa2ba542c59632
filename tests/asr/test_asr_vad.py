"""Voice-activity chunking (services/asr/vad.py, chunking.py): Silero VAD finds speech and nothing else, long audio
becomes <= 30 s chunks of speech that cover all of it, and a chunked transcript is the speech's text on the
original timeline: empty for silence, close to the references for real speech with long pauses."""

import importlib.util
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.asr.chunking import (
    AUTO,
    Chunk,
    ChunkingOptions,
    chunking_options,
    find_chunks,
    plan_chunks,
    transcribe_chunked,
)
from services.asr.domain import ASRJob, DecodeOptions
from services.asr.runner import ASRRunner
from services.asr.settings import ASRSettings
from services.asr.vad import SileroVad, SpeechSegment, VadOptions, model_path, segments_from_probabilities
from services.kit.errors import InvalidArgument
from services.kit.testing import word_error_rate

RATE = 16000
REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "models" / "real"
SPEECH = REAL / "speech"
REFS = SPEECH / "refs.tsv"

SPEECH_ABSENT = pytest.mark.skipif(
    not REFS.is_file(), reason="held-out speech is absent: run `make real-asr`"
)
WHISPER_BASE_ABSENT = pytest.mark.skipif(
    not (REAL / "whisper-base" / "model.safetensors").is_file(),
    reason="real whisper-base is absent: run `make real-asr`",
)


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


@pytest.fixture(scope="module")
def silero_utils():
    """silero's own utils_vad.py, loaded from the wheel by file so that the package's __init__ (which sets
    torch's thread count process-wide) does not run."""
    spec = importlib.util.spec_from_file_location(
        "silero_utils_vad", model_path().parents[1] / "utils_vad.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip(clip_id: str) -> np.ndarray:
    audio, rate = sf.read(SPEECH / f"{clip_id}.wav", dtype="float32")
    assert rate == RATE
    return audio


def references() -> list[tuple[str, str, str]]:
    """(clip id, language, text)."""
    rows = [line.split("\t") for line in REFS.read_text(encoding="utf-8").splitlines()]
    return [(row[0], row[1], row[3]) for row in rows]


def with_pauses(
    clip_ids: list[str], seed: int, pause_s=(3.0, 5.0)
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The clips in order, each after a pause of digital silence (and one at the end); with where each clip's
    sound really is (first and last sample above 1% of full scale), in seconds."""
    rng = np.random.default_rng(seed)
    parts, truth, position = [], [], 0
    for clip_id in clip_ids:
        audio = clip(clip_id)
        pause = np.zeros(int(rng.uniform(*pause_s) * RATE), dtype=np.float32)
        position += pause.size
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        truth.append(((position + loud[0]) / RATE, (position + loud[-1]) / RATE))
        parts += [pause, audio]
        position += audio.size
    parts.append(np.zeros(int(pause_s[0] * RATE), dtype=np.float32))
    return np.concatenate(parts), truth


# -- the detector ---------------------------------------------------------------------------------------------


def test_silence_and_low_noise_have_no_speech(vad):
    rng = np.random.default_rng(0)
    minute = 60 * RATE
    assert vad.speech_segments(np.zeros(minute, dtype=np.float32)) == []
    hiss = (0.003 * rng.standard_normal(minute)).astype(np.float32)
    assert vad.speech_segments(hiss) == []
    hum = (0.05 * np.sin(2 * np.pi * 50 * np.arange(minute) / RATE)).astype(np.float32)
    assert vad.speech_segments(hum) == []
    assert vad.speech_segments(np.zeros(0, dtype=np.float32)) == []


def test_refuses_multichannel_audio(vad):
    with pytest.raises(ValueError, match="one channel"):
        vad.speech_probabilities(np.zeros((2, RATE), dtype=np.float32))


def test_state_machine_matches_silero(silero_utils):
    """The speech-timestamp state machine gives silero's segments for any probabilities and settings: minimum
    speech and silence, padding, and over-long speech cut at its longest pause."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        frames = int(rng.integers(1, 3000))
        probabilities = np.repeat(rng.random(frames // 8 + 1), rng.integers(1, 16))[:frames].astype(
            np.float32
        )
        options = VadOptions(
            threshold=float(rng.uniform(0.2, 0.8)),
            min_speech_duration_ms=int(rng.integers(0, 500)),
            min_silence_duration_ms=int(rng.integers(0, 1000)),
            speech_pad_ms=int(rng.integers(0, 400)),
            max_speech_duration_s=float(rng.choice([math.inf, rng.uniform(1, 20)])),
        )
        samples = frames * 512 - int(rng.integers(0, 512))
        ours = [(s.start, s.end) for s in segments_from_probabilities(probabilities, samples, options)]
        theirs = silero_utils.get_speech_timestamps_from_probs(
            probabilities.tolist(),
            threshold=options.threshold,
            min_speech_duration_ms=options.min_speech_duration_ms,
            min_silence_duration_ms=options.min_silence_duration_ms,
            speech_pad_ms=options.speech_pad_ms,
            max_speech_duration_s=options.max_speech_duration_s,
            audio_length_samples=samples,
        )
        assert ours == [(s["start"], s["end"]) for s in theirs], options


@pytest.mark.parametrize(
    "with_speech", [False, pytest.param(True, marks=[pytest.mark.realmodels, SPEECH_ABSENT])]
)
def test_probabilities_match_silero_onnx_wrapper(vad, silero_utils, audio, with_speech):
    """The window loop (context samples, recurrent state, zero-padded last window) is silero's own."""
    samples = with_pauses(["en00", "de01"], seed=2)[0] if with_speech else audio(7.3, seed=3)
    wrapper = silero_utils.OnnxWrapper(str(model_path()), force_onnx_cpu=True)
    tensor = silero_utils.torch.from_numpy(np.pad(samples, (0, -samples.size % 512)))
    expected = [float(wrapper(tensor[i : i + 512], RATE)) for i in range(0, tensor.numel(), 512)]
    np.testing.assert_allclose(vad.speech_probabilities(samples), expected, atol=1e-6)
    if with_speech:
        assert max(expected) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.realmodels
@SPEECH_ABSENT
def test_one_segment_per_spoken_clip(vad, seed):
    clip_ids = [row[0] for row in references()][seed::7][:6]  # English, German and French voices
    samples, truth = with_pauses(clip_ids, seed)
    segments = vad.speech_segments(samples, VadOptions(min_silence_duration_ms=AUTO.silence_duration_ms))
    assert len(segments) == len(truth)
    for segment, (start, end) in zip(segments, truth, strict=True):
        found_start, found_end = segment.seconds
        assert abs(found_start - start) < 0.3 and abs(found_end - end) < 0.3, (segment.seconds, (start, end))


# -- chunks ---------------------------------------------------------------------------------------------------


def random_segments(rng, total_s: float) -> list[SpeechSegment]:
    segments, position = [], 0
    while True:
        position += int(rng.choice([rng.uniform(0.05, 1), rng.uniform(1, 40)]) * RATE)  # pause
        length = int(rng.choice([rng.uniform(0.25, 3), rng.uniform(3, 29)]) * RATE)
        if position + length > total_s * RATE:
            return segments
        segments.append(SpeechSegment(position, position + length))
        position += length


def test_chunks_are_at_most_30_s_and_cover_all_speech():
    rng = np.random.default_rng(4)
    for trial in range(300):
        options = ChunkingOptions(
            prefix_padding_ms=int(rng.integers(0, 2000)), suffix_padding_ms=int(rng.integers(0, 2000))
        )
        total = rng.uniform(1, 900)
        samples = int(total * RATE)
        segments = random_segments(rng, total)
        if trial % 10 == 0 and segments:  # longer than any chunk: split
            segments[-1] = SpeechSegment(segments[-1].start, samples)
        chunks = plan_chunks(segments, samples, options)
        assert all(0 < chunk.samples <= 30 * RATE for chunk in chunks)
        pieces = [piece for chunk in chunks for piece in chunk.pieces]
        assert all(0 <= start < end <= samples for start, end in pieces)
        assert all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:], strict=False)), (
            "pieces overlap or go back"
        )
        # Every speech sample lies in some piece, and so does the prefix padding before it, as far as the audio
        # and the speech before allow.
        previous_end = 0
        for segment in segments:
            wanted = max(segment.start - options.prefix_padding_ms * RATE // 1000, previous_end, 0)
            covered = sum(max(0, min(end, segment.end) - max(start, wanted)) for start, end in pieces)
            assert covered == segment.end - wanted
            previous_end = segment.end
        # As few chunks as there can be: filling each chunk as full as possible in order gives the fewest.
        fewest, filled = 0, math.inf
        for start, end in pieces:
            filled += end - start
            if filled > 30 * RATE:
                fewest, filled = fewest + 1, end - start
        assert len(chunks) == fewest


@pytest.mark.parametrize("long_pause_before", [2, 3])
def test_chunks_are_as_few_as_fit_and_cut_at_the_longest_pause(long_pause_before):
    """Five 8 s stretches (8.6 s padded, three fit in 30 s) make two chunks, cut where the 20 s pause is: after
    the second stretch or after the third (filling chunks greedily would always cut after the third)."""
    segments, position = [], 0
    for i in range(5):
        position += (20 if i == long_pause_before else 1) * RATE
        segments.append(SpeechSegment(position, position + 8 * RATE))
        position += 8 * RATE
    chunks = plan_chunks(segments, position + RATE, AUTO)
    assert [len(chunk.pieces) for chunk in chunks] == [long_pause_before, 5 - long_pause_before]
    assert chunks[1].start == segments[long_pause_before].start - AUTO.prefix_padding_ms * RATE // 1000


def test_silence_between_pieces_is_dropped_and_times_map_back():
    chunk = Chunk(((16000, 48000), (320000, 336000)))  # 1-3 s and 20-21 s of the original
    samples = np.arange(400000, dtype=np.float32)
    np.testing.assert_array_equal(
        chunk.audio(samples), np.concatenate([samples[16000:48000], samples[320000:336000]])
    )
    assert chunk.samples == 48000
    assert chunk.to_original(0.0) == 1.0
    assert chunk.to_original(1.5) == 2.5
    assert chunk.to_original(2.0) == 20.0  # on the seam: a start belongs to the later piece
    assert chunk.to_original(2.0, end=True) == 3.0  # an end to the earlier one
    assert chunk.to_original(2.5) == 20.5
    assert chunk.to_original(99.0) == 21.0


def test_chunking_strategy_values():
    assert chunking_options(None) is None
    assert chunking_options("auto") == AUTO
    vad = {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 100, "silence_duration_ms": 900}
    expected = ChunkingOptions(threshold=0.7, prefix_padding_ms=100, silence_duration_ms=900)
    assert chunking_options(vad) == expected
    assert (
        chunking_options(
            '{"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 100, "silence_duration_ms": 900}'
        )
        == expected
    )
    assert chunking_options({"type": "server_vad"}) == AUTO
    detector = expected.vad_options()
    assert (detector.threshold, detector.min_silence_duration_ms) == (0.7, 900)
    assert detector.max_speech_duration_s <= 30 - 0.4  # room for the padding in a chunk


@pytest.mark.parametrize(
    "strategy, problem",
    [
        ("manual", 'expected "auto"'),
        ("{not json", "not valid JSON"),
        ({"type": "semantic_vad"}, 'must be "server_vad"'),
        ({"type": "server_vad", "threshold": 1.5}, "threshold"),
        ({"type": "server_vad", "threshold": "loud"}, "threshold"),
        ({"type": "server_vad", "threshold": float("nan")}, "threshold"),
        ({"type": "server_vad", "prefix_padding_ms": -1}, "prefix_padding_ms"),
        ({"type": "server_vad", "prefix_padding_ms": 10.5}, "prefix_padding_ms"),
        ({"type": "server_vad", "silence_duration_ms": 10**9}, "silence_duration_ms"),
        ({"type": "server_vad", "silence_duration_ms": True}, "silence_duration_ms"),
        ({"type": "server_vad", "eagerness": "high"}, "unknown field"),
        ([1, 2], "server_vad object"),
    ],
)
def test_bad_chunking_strategy_is_refused_by_name(strategy, problem):
    with pytest.raises(InvalidArgument, match=problem) as raised:
        chunking_options(strategy)
    assert raised.value.field == "chunking_strategy"


def test_ten_minutes_in_bounded_memory(tmp_path):
    """A fresh process: memory at its peak (VmHWM) grows by less than 200 MB over the 10-minute input itself."""
    script = textwrap.dedent(
        """
        import numpy as np
        from services.asr.chunking import find_chunks
        from services.asr.vad import SileroVad

        def peak_mb():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

        vad = SileroVad()
        find_chunks(np.zeros(16000, dtype=np.float32), vad=vad)
        rng = np.random.default_rng(0)
        audio = (0.1 * rng.standard_normal(600 * 16000)).astype(np.float32)
        audio[::3 * 16000] = 0.9
        before = peak_mb()
        chunks = find_chunks(audio, vad=vad)
        print(peak_mb() - before, len(chunks))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    growth_mb = float(done.stdout.split()[0])
    assert growth_mb < 200, growth_mb


# -- transcripts ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runner(make_asr_settings):
    runner = ASRRunner(make_asr_settings(max_new_tokens=8))
    runner.load()
    return runner


@pytest.mark.realmodels
@SPEECH_ABSENT
def test_chunks_decode_in_batches_on_the_original_timeline(tiny_runner):
    samples, _ = with_pauses([row[0] for row in references() if row[1] == "en"][:16], seed=5, pause_s=(2, 4))
    chunks = find_chunks(samples)
    assert len(chunks) >= 3
    batches = []
    transcribe = tiny_runner.transcribe

    def spy(jobs, path, **kwargs):
        batches.append((len(jobs), path, max(job.duration for job in jobs)))
        return transcribe(jobs, path, **kwargs)

    tiny_runner.transcribe = spy
    try:
        job = ASRJob(samples, DecodeOptions(timestamps=True), language="en", words=True)
        transcript = transcribe_chunked(tiny_runner, job, batch_size=2)
    finally:
        del tiny_runner.transcribe
    assert [size for size, _, _ in batches] == [2] * (len(chunks) // 2) + [1] * (len(chunks) % 2)
    assert all(path == "plain" and longest <= 30 for _, path, longest in batches)
    assert transcript.duration == pytest.approx(len(samples) / RATE)
    assert len(transcript.segments) >= len(chunks)
    seeks = [segment.seek for segment in transcript.segments]
    assert seeks == sorted(seeks) and seeks[-1] >= chunks[-1].start * 100 // RATE
    # Every word starts and ends in speech as found in the original audio, never in a dropped pause.
    speech = [(piece[0] / RATE, piece[1] / RATE) for chunk in chunks for piece in chunk.pieces]
    assert transcript.words
    for word in transcript.words:
        for instant in (word.start, word.end):
            assert any(start - 0.01 <= instant <= end + 0.01 for start, end in speech), word


def test_silence_is_never_decoded(tiny_runner):
    passes = tiny_runner.main_passes
    job = ASRJob(np.zeros(45 * RATE, dtype=np.float32), DecodeOptions(timestamps=True), words=True)
    transcript = transcribe_chunked(tiny_runner, job)
    assert (transcript.text, transcript.segments, transcript.words, transcript.duration) == ("", [], [], 45.0)
    assert tiny_runner.main_passes == passes


@pytest.fixture(scope="module")
def base_runner():
    runner = ASRRunner(
        ASRSettings(model=str(REAL / "whisper-base"), assistant_model="", threads=1, log_level="warning")
    )
    runner.load()
    return runner


@pytest.mark.realmodels
@SPEECH_ABSENT
@WHISPER_BASE_ABSENT
def test_real_whisper_long_audio_with_pauses(base_runner):
    english = [row for row in references() if row[1] == "en"][:10]
    samples, _ = with_pauses([row[0] for row in english], seed=6, pause_s=(3, 8))
    assert len(samples) / RATE > 60
    transcript = transcribe_chunked(base_runner, ASRJob(samples, language="en"))
    error_rate = word_error_rate(" ".join(row[2] for row in english), transcript.text)
    print(f"chunked WER {error_rate:.3f} over {len(samples) / RATE:.0f} s: {transcript.text}")
    assert error_rate < 0.15


@pytest.mark.realmodels
@WHISPER_BASE_ABSENT
def test_real_whisper_silence_gives_empty_text(base_runner):
    rng = np.random.default_rng(7)
    for name, samples in (
        ("digital silence", np.zeros(40 * RATE, dtype=np.float32)),
        ("low noise", (0.003 * rng.standard_normal(40 * RATE)).astype(np.float32)),
    ):
        job = ASRJob(samples, language="en")
        assert transcribe_chunked(base_runner, job).text == ""
        plain = base_runner.transcribe([job], "plain")[0].text
        print(f"{name}: plain Whisper says {plain!r}")


def test_chunking_is_refused_clearly_where_onnxruntime_is_not_installed(monkeypatch):
    from services.asr import vad
    from services.asr.schemas import Transcription, check_request

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    assert vad.missing() == "onnxruntime is not installed"
    with pytest.raises(InvalidArgument) as refused:
        check_request(Transcription(chunking_strategy="auto"), None, None)
    assert refused.value.field == "chunking_strategy" and "onnxruntime" in refused.value.message
