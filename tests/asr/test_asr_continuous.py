"""Continuous batching of Whisper's plain decoding (services/asr/continuous.py), driven directly without a server:
requests join a running decode loop between steps and each finishes with the transcript `predict_batch` gives it
alone, on the tiny Whisper and on real whisper-base (`make real-asr`)."""

import asyncio
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.asr.continuous import ContinuousDecoding
from services.asr.domain import ASRJob, DecodeOptions
from services.asr.runner import ASRRunner
from services.kit.testing import standalone_work

REAL = Path(__file__).resolve().parents[2] / "models" / "real"
HAS_REAL = (REAL / "whisper-base" / "model.safetensors").is_file() and (
    REAL / "speech" / "en00.wav"
).is_file()


@pytest.fixture(scope="module")
def event_loop_for_works():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def runner(make_asr_settings):
    # No assistant: `auto` requests take the plain path, which is the one decoded step by step.
    runner = ASRRunner(make_asr_settings(assistant_model=""))
    runner.load()
    runner.warmup()
    return runner


def same_transcript(got, expected) -> None:
    """Equal transcripts: tokens, text, language, segments and word timings exactly; token log-probabilities
    within float noise (a step decodes several sequences at once, and a batched matrix product may round the
    last bit differently from a lone one)."""
    assert not isinstance(got, Exception), got
    assert got.tokens == expected.tokens
    assert replace(got, logprobs=None) == replace(expected, logprobs=None)
    if expected.logprobs is None:
        assert got.logprobs is None
        return
    assert [(t.token, t.bytes) for t in got.logprobs] == [(t.token, t.bytes) for t in expected.logprobs]
    for a, b in zip(got.logprobs, expected.logprobs, strict=True):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4)


def run_staggered(runner, works, join_after: dict[int, list], leave_after: dict[int, list] | None = None):
    """Open a loop for works[0]'s key, join works[0], then join (or leave) more works after the given step
    counts; step until everything joined has finished. Returns {id(work): result} and the number of steps."""
    loop = ContinuousDecoding(runner).open_loop(works[0].payload.batch_key, works[0].payload)
    assert loop is not None
    loop.join([works[0]])
    joined, results, steps = {id(works[0])}, {}, 0
    leave_after = leave_after or {}
    while (joined - set(results)) or any(at > steps for at in join_after):
        for work, result in loop.step():
            assert id(work) not in results
            results[id(work)] = result
        steps += 1
        for work in join_after.get(steps, []):
            loop.join([work])
            joined.add(id(work))
        for work in leave_after.get(steps, []):
            loop.leave(work)
            joined.discard(id(work))
        assert steps < 1000
    return results, steps


def test_works_joining_mid_decode_each_get_their_lone_transcript(runner, audio, event_loop_for_works):
    jobs = [
        ASRJob(audio(3.0, seed=11)),
        ASRJob(audio(7.0, seed=12), language="de"),
        ASRJob(audio(12.0, seed=13), words=True, logprobs=True, window_stats=True),
        ASRJob(audio(1.5, seed=14), language="ru"),
        ASRJob(audio(25.0, seed=15)),
    ]
    works = [standalone_work(job, job.batch_key, event_loop_for_works) for job in jobs]
    alone = [runner.predict_batch([work])[0] for work in works]
    passes = runner.main_passes
    results, steps = run_staggered(runner, works, {2: works[1:3], 5: works[3:]})
    for work, expected in zip(works, alone, strict=True):
        same_transcript(results[id(work)], expected)
    assert {r.language for r in alone} >= {"de", "ru"}
    # Decoded together: one decoder pass per step for everyone, plus a prompt pass, a language detection pass
    # and a word alignment pass per request at most; decoded alone it takes a pass per token per request.
    tokens = sum(len(r.tokens) for r in alone)
    assert runner.main_passes - passes <= steps + 3 * len(works) < tokens


def test_options_that_change_the_prompt_and_processors(runner, audio, event_loop_for_works):
    # A text prompt, translation, and timestamps (whose window may end inside a segment: generate() would decode
    # on in a second window, and so does the loop, by decoding that request whole).
    for options in (
        DecodeOptions(prompt="hello world the weather today"),
        DecodeOptions(task="translate"),
        DecodeOptions(timestamps=True),
    ):
        jobs = [
            ASRJob(audio(seconds, seed=int(seconds * 7)), options, language)
            for seconds, language in ((4.0, "en"), (9.0, None), (2.0, "fr"))
        ]
        works = [standalone_work(job, job.batch_key, event_loop_for_works) for job in jobs]
        alone = [runner.predict_batch([work])[0] for work in works]
        results, _ = run_staggered(runner, works, {3: works[1:]})
        for work, expected in zip(works, alone, strict=True):
            same_transcript(results[id(work)], expected)


def test_leave_mid_decode_frees_the_slot_and_the_others_finish_unchanged(runner, audio, event_loop_for_works):
    jobs = [
        ASRJob(audio(seconds, seed=seed)) for seconds, seed in ((5.0, 21), (8.0, 22), (3.0, 23), (6.0, 24))
    ]
    works = [standalone_work(job, job.batch_key, event_loop_for_works) for job in jobs]
    alone = {id(work): runner.predict_batch([work])[0] for work in works}
    loop = ContinuousDecoding(runner).open_loop(jobs[0].batch_key, jobs[0])
    loop.join(works[:3])
    for _ in range(4):
        assert loop.step() == []
    loop.leave(works[0])  # the first slot: the last running sequence moves into it
    assert len(loop.running) == 2
    loop.join([works[3]])
    results = {}
    while loop.running:
        results.update((id(work), result) for work, result in loop.step())
    assert id(works[0]) not in results
    for work in works[1:]:
        same_transcript(results[id(work)], alone[id(work)])


def test_a_sequence_that_ends_at_its_prompt_pass_leaves_at_the_next_step(make_asr_settings, audio):
    # With a one-token limit every request is done after its prompt's pass: it must leave with that one token,
    # not take another step.
    runner = ASRRunner(make_asr_settings(assistant_model="", max_new_tokens=1))
    runner.load()
    loop_works = asyncio.new_event_loop()
    try:
        jobs = [ASRJob(audio(2.0, seed=61)), ASRJob(audio(3.0, seed=62))]
        works = [standalone_work(job, job.batch_key, loop_works) for job in jobs]
        alone = [runner.predict_batch([work])[0] for work in works]
        loop = ContinuousDecoding(runner).open_loop(jobs[0].batch_key, jobs[0])
        loop.join(works)
        results = dict((id(work), result) for work, result in loop.step())
        assert loop.running == []
        for work, expected in zip(works, alone, strict=True):
            assert len(expected.tokens) == 1
            same_transcript(results[id(work)], expected)
    finally:
        loop_works.close()


def test_a_join_that_fails_joins_none_of_its_works(runner, audio, event_loop_for_works):
    # The batcher joins the others again one by one when a join raises: none may be in the loop already.
    good = standalone_work(ASRJob(audio(2.0, seed=71)), None, event_loop_for_works)
    # A language code the model does not know (the API refuses it before it is queued): generate() raises.
    bad = standalone_work(ASRJob(audio(2.0, seed=72), language="xx"), None, event_loop_for_works)
    loop = ContinuousDecoding(runner).open_loop(good.payload.batch_key, good.payload)
    with pytest.raises(ValueError, match="xx"):
        loop.join([good, bad])
    assert loop.running == []
    loop.join([good])
    expected = runner.predict_batch([good])[0]
    results = []
    while not results:
        results = loop.step()
    same_transcript(results[0][1], expected)


def test_streamed_partials_add_up_to_the_text(runner, audio, event_loop_for_works):
    job = ASRJob(audio(4.0, seed=31), stream=True)
    work = standalone_work(job, job.batch_key, event_loop_for_works)
    events = []
    work.emit = events.append
    loop = ContinuousDecoding(runner).open_loop(job.batch_key, job)
    loop.join([work])
    results = []
    while not results:
        results = loop.step()
    assert "".join(event.delta for event in events) == results[0][1].text != ""


def test_what_is_not_step_decoded(make_asr_settings, runner, audio):
    short = ASRJob(audio(2.0, seed=41))
    assert ContinuousDecoding(runner).open_loop(short.batch_key, short) is not None
    whole = [
        ASRJob(audio(31.0, seed=42)),  # long-form: seeks through 30 s windows
        ASRJob(audio(2.0, seed=43), DecodeOptions(temperature=0.4)),  # sampling
        ASRJob(audio(2.0, seed=44), decoding="assisted"),
        ASRJob(audio(2.0, seed=45), chunking=("vad",)),
    ]
    for job in whole:
        assert ContinuousDecoding(runner).open_loop(job.batch_key, job) is None
    assert ContinuousDecoding(runner).rows(short) == 1
    fallback = ASRRunner(make_asr_settings(assistant_model="", fallback_temperatures=(0.2, 0.4)))
    assert not fallback.step_decodable(short)  # a failed window would be re-decoded by sampling
    off = ASRRunner(make_asr_settings(assistant_model="", continuous_batching=False))
    assert not off.step_decodable(short)


def test_auto_requests_keep_the_assistant_until_the_queue_is_deep(make_asr_settings, audio):
    with_assistant = ASRRunner(make_asr_settings())
    with_assistant.assistant = object()  # loaded or not, only its presence decides
    auto, plain = ASRJob(audio(2.0, seed=51)), ASRJob(audio(2.0, seed=51), decoding="plain")
    threshold = with_assistant.settings.adaptive_threshold
    assert not with_assistant.step_decodable(auto)  # alone: assisted, whole-request
    assert not with_assistant.step_decodable(auto, waiting=threshold)
    assert with_assistant.step_decodable(
        auto, waiting=threshold + 1
    )  # under load: the plain path, step by step
    assert with_assistant.step_decodable(plain)


def test_continuous_batching_setting_reads_the_environment(monkeypatch):
    from services.asr.settings import ASRSettings

    monkeypatch.setenv("ASR_CONTINUOUS_BATCHING", "false")
    assert ASRSettings().continuous_batching is False


@pytest.mark.realmodels
@pytest.mark.skipif(not HAS_REAL, reason="real whisper-base and speech are absent: run `make real-asr`")
@pytest.mark.parametrize("encoder_dtype", ["float32", "bfloat16"])
def test_real_whisper_base_joining_works_match_their_lone_transcripts(event_loop_for_works, encoder_dtype):
    from services.asr.settings import ASRSettings

    settings = ASRSettings(
        model=str(REAL / "whisper-base"), assistant_model="", threads=1, encoder_dtype=encoder_dtype
    )
    runner = ASRRunner(settings)
    runner.load()
    assert runner.encoder_dtype == encoder_dtype

    def clip(name: str) -> np.ndarray:
        samples, rate = sf.read(REAL / "speech" / f"{name}.wav", dtype="float32")
        assert rate == 16000
        return samples

    jobs = [
        ASRJob(clip("en00")),
        ASRJob(clip("de00")),
        ASRJob(np.concatenate([clip("en01"), clip("en02")]), logprobs=True, words=True),
        ASRJob(clip("fr00"), language="fr"),
        ASRJob(clip("en03")),
    ]
    works = [standalone_work(job, job.batch_key, event_loop_for_works) for job in jobs]
    alone = [runner.predict_batch([work])[0] for work in works]
    results, _ = run_staggered(runner, works, {3: works[1:3], 6: works[3:]})
    for work, expected in zip(works, alone, strict=True):
        same_transcript(results[id(work)], expected)
    assert "fox" in alone[0].text.lower() and alone[1].language == "de"
    stamped = [replace(job, options=DecodeOptions(timestamps=True)) for job in jobs[:3]]
    works = [standalone_work(job, job.batch_key, event_loop_for_works) for job in stamped]
    alone = [runner.predict_batch([work])[0] for work in works]
    results, _ = run_staggered(runner, works, {2: works[1:]})
    for work, expected in zip(works, alone, strict=True):
        same_transcript(results[id(work)], expected)
        assert expected.segments


def test_concurrent_requests_over_rest_join_one_decode_and_get_their_alone_transcripts(
    make_asr_settings, audio_file, monkeypatch
):
    import concurrent.futures

    import httpx

    from services.asr.continuous import PlainDecodeLoop
    from services.asr.service import create_service
    from services.kit.testing import ServerThread

    joined = []
    original_join = PlainDecodeLoop.join

    def counting_join(loop, works):
        joined.append(len(works))
        return original_join(loop, works)

    monkeypatch.setattr(PlainDecodeLoop, "join", counting_join)
    settings = make_asr_settings(assistant_model="", log_level="warning")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        url = f"{server.rest_url}/v1/audio/transcriptions"

        def transcribe(seconds: float, seed: int) -> str:
            files = {"file": ("clip.wav", audio_file(seconds, seed=seed), "audio/wav")}
            response = httpx.post(
                url, files=files, data={"model": "whisper-1", "language": "en"}, timeout=120
            )
            assert response.status_code == 200, response.text
            return response.json()["text"]

        clips = [(1.0 + i, 60 + i) for i in range(6)]
        alone = [transcribe(*clip) for clip in clips]
        joined.clear()
        with concurrent.futures.ThreadPoolExecutor(len(clips)) as pool:
            together = list(pool.map(lambda clip: transcribe(*clip), clips))
    assert together == alone
    assert sum(joined) == len(clips)
    assert len(joined) < len(clips), "requests that arrived while one decoded joined its loop together"
