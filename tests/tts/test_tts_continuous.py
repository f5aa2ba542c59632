"""Continuous batching of SpeechT5: requests that join a running decode mid-way, at other steps and with other
seeds, get the audio they get decoded alone, streamed sentence by sentence in text order."""

import copy

import numpy as np
import pytest

from services.kit.testing import standalone_work
from services.tts.runner import AudioResult, ConversionJob, SpeechJob, SpeechRunner


@pytest.fixture(scope="module")
def runner(make_tts_settings) -> SpeechRunner:
    """Random tiny weights: every sentence runs to its length limit (the stop probability never counts)."""
    loaded = SpeechRunner(make_tts_settings())
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def stopping_runner(runner) -> SpeechRunner:
    """The same models with a threshold the tiny model's stop probabilities cross now and then: sentences
    stop at steps that depend on their dropout masks, between their length bounds."""
    changed = copy.copy(runner)
    changed.settings = runner.settings.model_copy(
        update={"stop_threshold": 1.06, "min_len_ratio": 1.0, "max_len_ratio": 4.0}
    )
    return changed


def speech(runner: SpeechRunner, text: str, seed: int | None, **options) -> SpeechJob:
    return SpeechJob(tuple(runner.sentences(text)), runner.voices.get(None), seed=seed, **options)


def recording(job: SpeechJob):
    """A standalone work whose emitted sentences are kept in `work.emitted`."""
    work = standalone_work(job)
    work.emitted = []
    work.emit = work.emitted.append
    return work


def alone(runner: SpeechRunner, job: SpeechJob) -> AudioResult:
    [result] = runner.predict_speech([standalone_work(job)])
    return result


def drain(loop, results: dict, steps: int | None = None) -> int:
    taken = 0
    while loop.rows and (steps is None or taken < steps):
        for work, result in loop.step():
            assert work not in results, "a work finished twice"
            results[work] = result
        taken += 1
    return taken


def assert_same_audio(result: AudioResult, expected: AudioResult) -> None:
    assert isinstance(result, AudioResult)
    assert result.sample_rate == expected.sample_rate
    assert result.samples.shape == expected.samples.shape
    np.testing.assert_allclose(result.samples, expected.samples, rtol=0, atol=1e-5)


@pytest.mark.parametrize("runner_name", ["runner", "stopping_runner"])
def test_requests_joining_mid_decode_get_their_solo_audio(request, runner_name):
    runner: SpeechRunner = request.getfixturevalue(runner_name)
    jobs = [
        speech(runner, "Hello there. How are you today?", seed=1),
        speech(runner, "A much longer sentence that goes on for quite a while. Short.", seed=2, speed=1.25),
        speech(runner, "Third one.", seed=3, stream=True),
        speech(runner, "Four. Five five. Six six six.", seed=4),
    ]
    works = [recording(job) for job in jobs]
    loop = runner.open_loop("shared", jobs[0])
    results: dict = {}
    loop.join(works[:1])
    drain(loop, results, steps=3)
    loop.join(works[1:3])
    assert {call.job.work for call, _ in loop.rows} == set(works[:3])  # decoding together
    drain(loop, results, steps=2)
    loop.join(works[3:])
    drain(loop, results)

    assert set(results) == set(works) and not loop.jobs
    for job, work in zip(jobs, works, strict=True):
        result = results[work]
        assert_same_audio(result, alone(runner, job))
        assert [event.index for event in work.emitted] == list(range(len(job.sentences)))
        np.testing.assert_array_equal(
            np.concatenate([event.samples for event in work.emitted]), result.samples
        )


def test_a_request_finishes_the_step_its_last_sentence_stops(runner):
    """A short request that joins a long one comes back long before the long one does."""
    long = speech(runner, "This sentence is long enough to keep the decoder busy for a good while.", seed=5)
    short = speech(runner, "Hi.", seed=6)
    long_work, short_work = standalone_work(long), standalone_work(short)
    loop = runner.open_loop("shared", long)
    results: dict = {}
    loop.join([long_work])
    drain(loop, results, steps=2)
    loop.join([short_work])
    steps_to_short = 0
    while short_work not in results:
        steps_to_short += drain(loop, results, steps=1)
    assert long_work not in results
    steps_to_long = drain(loop, results)
    assert steps_to_long > steps_to_short
    assert_same_audio(results[short_work], alone(runner, short))
    assert_same_audio(results[long_work], alone(runner, long))


def test_leaving_mid_decode_frees_the_rows_and_the_others_finish_unchanged(runner):
    gone = speech(runner, "Nobody waits for this one. Or this.", seed=7)
    kept = speech(runner, "Somebody waits for this one.", seed=8)
    gone_work, kept_work = standalone_work(gone), standalone_work(kept)
    loop = runner.open_loop("shared", gone)
    results: dict = {}
    loop.join([gone_work, kept_work])
    drain(loop, results, steps=4)
    loop.leave(gone_work)
    assert {call.job.work for call, _ in loop.rows} == {kept_work}
    assert loop.state.self_kv.shape[2] == len(loop.rows) == 1
    drain(loop, results)
    assert list(results) == [kept_work]
    assert_same_audio(results[kept_work], alone(runner, kept))


def test_unseeded_requests_decode_in_the_loop_at_their_solo_lengths_with_their_own_dropout(runner):
    jobs = [speech(runner, "Plain one. Plain two.", seed=None) for _ in range(2)]
    jobs.append(speech(runner, "Plain three.", seed=None))
    works = [standalone_work(job) for job in jobs]
    loop = runner.open_loop("shared", jobs[0])
    results: dict = {}
    loop.join(works)
    drain(loop, results)
    for job, work in zip(jobs, works, strict=True):
        assert results[work].samples.shape == alone(runner, job).samples.shape
        assert np.isfinite(results[work].samples).all() and np.abs(results[work].samples).max() > 0
    # The same words, but each request draws its own pre-net dropout masks.
    assert not np.allclose(results[works[0]].samples, results[works[1]].samples)


def test_a_work_that_cannot_join_leaves_the_loop_as_it_was(runner):
    job = speech(runner, "Joins fine.", seed=15)
    conversion = ConversionJob(np.zeros(16000, dtype=np.float32), runner.voices.get(None))
    work = standalone_work(job)
    loop = runner.open_loop("shared", job)
    with pytest.raises(TypeError, match="speech jobs"):
        loop.join([work, standalone_work(conversion)])
    assert not loop.rows and not loop.jobs
    loop.join([work])  # as the batcher retries the others one by one
    results: dict = {}
    drain(loop, results)
    assert_same_audio(results[work], alone(runner, job))


def test_seeded_requests_batch_with_others_and_keep_their_solo_audio(runner):
    seeded = speech(runner, "Seeded one. Seeded two.", seed=9)
    plain = speech(runner, "Plain one.", seed=None)
    assert seeded.batch_key == plain.batch_key == speech(runner, "Other.", seed=10).batch_key
    together = runner.predict_speech([standalone_work(plain), standalone_work(seeded)])
    assert_same_audio(together[1], alone(runner, seeded))
    assert together[0].samples.shape == alone(runner, plain).samples.shape


def test_speech_decodes_continuously_unless_switched_off(runner):
    job = speech(runner, " ".join(f"Sentence number {i}." for i in range(40)), seed=11)
    conversion = ConversionJob(np.zeros(16000, dtype=np.float32), runner.voices.get(None))
    assert runner.step_decoder is runner
    assert runner.open_loop("shared", job) is not None
    assert runner.open_loop("shared", conversion) is None  # voice conversion runs whole batches
    # A seeded job makes its first sentence alone, then the rest in calls of at most max_rows_per_call.
    assert runner.rows(job) == runner.settings.max_rows_per_call == 16
    assert runner.rows(speech(runner, "One. Two. Three.", seed=None)) == 3
    switched_off = copy.copy(runner)
    switched_off.settings = runner.settings.model_copy(update={"continuous_batching": False})
    assert switched_off.step_decoder is None
    assert switched_off.open_loop("shared", job) is None


def test_requests_finishing_together_share_the_vocoder_and_keep_their_solo_audio(runner, monkeypatch):
    jobs = [speech(runner, "The same words. Again.", seed=seed) for seed in (12, 13)]
    jobs.append(speech(runner, "The same words, slower.", seed=14, speed=0.8))
    works = [standalone_work(job) for job in jobs]
    vocoder_rows = []
    vocode = runner._vocode
    monkeypatch.setattr(
        runner, "_vocode", lambda frames, speeds: vocoder_rows.append(len(frames)) or vocode(frames, speeds)
    )
    loop = runner.open_loop("shared", jobs[0])
    results: dict = {}
    loop.join(works)
    drain(loop, results)
    # The equal calls of both rounds share a vocoder batch each; the slower sentence pads to another length.
    assert sorted(vocoder_rows) == [1, 2, 2]
    monkeypatch.undo()
    for job, work in zip(jobs, works, strict=True):
        assert_same_audio(results[work], alone(runner, job))


def test_concurrent_speech_over_rest_matches_alone_and_short_requests_return_first(tts_server):
    import concurrent.futures
    import time

    import httpx

    def speak(text: str, seed: int) -> tuple[np.ndarray, float]:
        response = httpx.post(
            f"{tts_server.rest_url}/v1/audio/speech",
            json={"input": text, "voice": "alloy", "response_format": "pcm", "seed": seed},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return np.frombuffer(response.content, dtype=np.int16).astype(np.int32), time.monotonic()

    long_text = " ".join(["A long sentence with many words to speak, one after another."] * 2)
    requests = [(long_text, 1), ("Hi.", 2), ("Short one.", 3), ("A third, a little longer.", 4)]
    alone = [speak(text, seed)[0] for text, seed in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        first = pool.submit(speak, *requests[0])
        time.sleep(0.02)
        rest = [pool.submit(speak, text, seed) for text, seed in requests[1:]]
        together = [first.result(), *(future.result() for future in rest)]
    for (audio, _), expected in zip(together, alone, strict=True):
        assert audio.shape == expected.shape
        assert np.abs(audio - expected).max() <= 2  # pcm16 of audio equal within 1e-5
    assert together[1][1] < together[0][1], "the short request did not wait for the long one"
    assert type(tts_server.services[0].batchers[0]).__name__ == "ContinuousBatcher"
