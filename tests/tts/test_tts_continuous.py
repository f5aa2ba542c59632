"""Continuous batching of SpeechT5: unseeded requests that join a running decode mid-way, at other steps, get the
audio they get decoded alone, streamed sentence by sentence in text order; seeded ones never enter the loop.

SpeechT5's pre-net draws dropout at inference, so exact comparisons need deterministic masks without seeds
(seeded requests run whole-request). Its pre-net keeps a unit where a Bernoulli(p) draw is 1, so with the
dropout probability p set to 0 every draw drops every unit: the same masks, alone or in the loop."""

import copy

import numpy as np
import pytest
import torch

from services.kit.testing import standalone_work
from services.tts.runner import SpeechRunner
from services.tts.synthesis import SEEDED_BATCH, SHARED_BATCH, AudioResult, ConversionJob, SpeechJob


@pytest.fixture(scope="module")
def runner(make_tts_settings) -> SpeechRunner:
    """Random tiny weights: every sentence runs to its length limit (the stop probability never counts)."""
    loaded = SpeechRunner(make_tts_settings())
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def exact_runner(runner) -> SpeechRunner:
    """The same models with the pre-net dropout probability at 0, which both the model and the loop read
    from the model's config: nothing random is left."""
    changed = copy.copy(runner)
    changed.tts = copy.deepcopy(runner.tts)
    changed.tts.config.speech_decoder_prenet_dropout = 0.0
    assert changed.tts.speecht5.decoder.prenet.config is changed.tts.config
    return changed


@pytest.fixture(scope="module")
def exact_stopping_runner(exact_runner) -> SpeechRunner:
    """A threshold the tiny model's stop probabilities cross now and then: sentences stop at steps that depend
    on their text, between their length bounds."""
    changed = copy.copy(exact_runner)
    changed.settings = exact_runner.settings.model_copy(
        update={"stop_threshold": 1.055, "min_len_ratio": 1.0, "max_len_ratio": 4.0}
    )
    return changed


@pytest.fixture
def units_kept_runner(runner, monkeypatch) -> SpeechRunner:
    """The shipped dropout probability with every mask drawn as all ones: every unit kept (and scaled), so the
    previous frame reaches the pre-net, which a dropout probability of 0 cuts off."""
    monkeypatch.setattr(torch, "bernoulli", lambda input, p=None, **_: torch.ones_like(input))
    return runner


def speech(runner: SpeechRunner, text: str, **options) -> SpeechJob:
    return SpeechJob(tuple(runner.sentences(text)), runner.voices.get(None), **options)


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


@pytest.mark.parametrize("runner_name", ["exact_runner", "exact_stopping_runner", "units_kept_runner"])
def test_requests_joining_mid_decode_get_their_solo_audio(request, runner_name):
    runner: SpeechRunner = request.getfixturevalue(runner_name)
    jobs = [
        speech(runner, "Hello there. How are you today?"),
        speech(runner, "A much longer sentence that goes on for quite a while. Short.", speed=1.25),
        speech(runner, "Third one. And its second sentence.", stream=True),
        speech(runner, "Four. Five five. Six six six."),
    ]
    works = [recording(job) for job in jobs]
    loop = runner.open_loop(SHARED_BATCH, jobs[0])
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


def test_the_stopping_variant_stops_sentences_between_their_bounds(exact_stopping_runner):
    """Guards the stopping variant above: its threshold stops sentences early, each at a step of its own."""
    runner = exact_stopping_runner
    job = speech(runner, "Hello there. A much longer sentence that goes on for quite a while. Short.")
    frames = set()
    for sentence in job.sentences:
        [waveform] = runner.synthesize([sentence.token_ids], [job.speaker], [1.0])
        length = waveform.size // runner.samples_per_frame
        assert len(sentence.token_ids) < length < 4 * len(sentence.token_ids)  # the bounds of its ratios
        frames.add(length)
    assert len(frames) == len(job.sentences) == 3


def test_a_request_finishes_the_step_its_last_sentence_stops(exact_runner):
    """A short request that joins a long one comes back long before the long one does."""
    runner = exact_runner
    long = speech(runner, "This sentence is long enough to keep the decoder busy for a good while.")
    short = speech(runner, "Hi.")
    long_work, short_work = standalone_work(long), standalone_work(short)
    loop = runner.open_loop(SHARED_BATCH, long)
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


def test_leaving_mid_decode_frees_the_rows_and_the_others_finish_unchanged(exact_runner):
    runner = exact_runner
    gone = speech(runner, "Nobody waits for this one. Or this.")
    kept = speech(runner, "Somebody waits for this one.")
    gone_work, kept_work = standalone_work(gone), standalone_work(kept)
    loop = runner.open_loop(SHARED_BATCH, gone)
    results: dict = {}
    loop.join([gone_work, kept_work])
    drain(loop, results, steps=4)
    loop.leave(gone_work)
    assert {call.job.work for call, _ in loop.rows} == {kept_work}
    assert loop.state.self_kv.shape[2] == len(loop.rows) == 1
    drain(loop, results)
    assert list(results) == [kept_work]
    assert_same_audio(results[kept_work], alone(runner, kept))


def test_unseeded_requests_in_the_loop_draw_their_own_dropout(runner):
    """With the shipped dropout the loop keeps the solo lengths, but every request and every run differs."""
    jobs = [speech(runner, "Plain one. Plain two.") for _ in range(2)]
    jobs.append(speech(runner, "Plain three."))
    runs = []
    for _ in range(2):
        works = [standalone_work(job) for job in jobs]
        loop = runner.open_loop(SHARED_BATCH, jobs[0])
        results: dict = {}
        loop.join(works)
        drain(loop, results)
        runs.append([results[work].samples for work in works])
    for job, samples in zip(jobs, runs[0], strict=True):
        assert samples.shape == alone(runner, job).samples.shape
        assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    same_words = runs[0][:2]
    assert not np.allclose(*same_words)
    assert not np.allclose(runs[0][2], runs[1][2])


def test_a_work_that_cannot_join_leaves_the_loop_as_it_was(exact_runner):
    runner = exact_runner
    job = speech(runner, "Joins fine.")
    conversion = ConversionJob(np.zeros(16000, dtype=np.float32), runner.voices.get(None))
    work = standalone_work(job)
    loop = runner.open_loop(SHARED_BATCH, job)
    with pytest.raises(TypeError, match="speech jobs"):
        loop.join([work, standalone_work(conversion)])
    with pytest.raises(ValueError, match="seeded speech jobs run whole-request"):
        loop.join([work, standalone_work(speech(runner, "Seeded.", seed=1))])
    assert not loop.rows and not loop.jobs
    loop.join([work])  # as the batcher retries the others one by one
    results: dict = {}
    drain(loop, results)
    assert_same_audio(results[work], alone(runner, job))


def test_seeded_requests_are_declined_by_the_loop_and_batch_apart(runner):
    seeded = speech(runner, "Seeded one. Seeded two.", seed=9)
    plain = speech(runner, "Plain one.")
    assert seeded.batch_key == speech(runner, "Other.", seed=10).batch_key == SEEDED_BATCH
    assert plain.batch_key == speech(runner, "Other.", stream=True).batch_key == SHARED_BATCH != SEEDED_BATCH
    assert runner.open_loop(seeded.batch_key, seeded) is None  # the batcher runs it through predict_speech
    assert runner.open_loop(plain.batch_key, plain) is not None
    # Whole-request, a seeded request makes its calls alone: its bytes do not depend on its batch.
    together = runner.predict_speech([standalone_work(plain), standalone_work(seeded)])
    np.testing.assert_array_equal(together[1].samples, alone(runner, seeded).samples)
    assert together[0].samples.shape == alone(runner, plain).samples.shape


def test_speech_decodes_continuously_unless_switched_off(runner):
    job = speech(runner, " ".join(f"Sentence number {i}." for i in range(40)))
    conversion = ConversionJob(np.zeros(16000, dtype=np.float32), runner.voices.get(None))
    assert runner.step_decoder is runner
    assert runner.open_loop(SHARED_BATCH, job) is not None
    assert runner.open_loop(SHARED_BATCH, conversion) is None  # voice conversion runs whole batches
    # A job decodes its sentences in calls of at most max_rows_per_call.
    assert runner.rows(job) == runner.settings.max_rows_per_call == 16
    assert runner.rows(speech(runner, "One. Two. Three.")) == 3
    switched_off = copy.copy(runner)
    switched_off.settings = runner.settings.model_copy(update={"continuous_batching": False})
    assert switched_off.step_decoder is None
    assert switched_off.open_loop(SHARED_BATCH, job) is None


def test_requests_finishing_together_share_the_vocoder_and_keep_their_solo_audio(exact_runner, monkeypatch):
    runner = exact_runner
    jobs = [speech(runner, "The same words. Again.") for _ in range(2)]
    jobs.append(speech(runner, "The same words, slower.", speed=0.8))
    works = [standalone_work(job) for job in jobs]
    vocoder_rows = []
    forward = runner.vocoder.forward
    monkeypatch.setattr(
        runner.vocoder, "forward", lambda frames: vocoder_rows.append(frames.shape[0]) or forward(frames)
    )
    loop = runner.open_loop(SHARED_BATCH, jobs[0])
    results: dict = {}
    loop.join(works)
    drain(loop, results)
    # The two equal calls share a vocoder batch; the slower sentence pads to another length.
    assert sorted(vocoder_rows) == [1, 4]
    monkeypatch.undo()
    for job, work in zip(jobs, works, strict=True):
        assert_same_audio(results[work], alone(runner, job))


def test_concurrent_speech_over_rest_keeps_solo_lengths_and_short_requests_return_first(tts_server):
    import concurrent.futures
    import time

    import httpx

    def speak(text: str) -> tuple[int, float]:
        response = httpx.post(
            f"{tts_server.rest_url}/v1/audio/speech",
            json={"input": text, "voice": "alloy", "response_format": "pcm"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return len(response.content) // 2, time.monotonic()  # pcm16 samples

    long_text = " ".join(["A long sentence with many words to speak, one after another."] * 2)
    texts = [long_text, "Hi.", "Short one.", "A third, a little longer."]
    alone = [speak(text)[0] for text in texts]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(speak, texts[0])
        time.sleep(0.02)
        rest = [pool.submit(speak, text) for text in texts[1:]]
        together = [first.result(), *(future.result() for future in rest)]
    # Unseeded, the samples differ run to run (dropout); the tiny model never stops early, so lengths do not.
    assert [samples for samples, _ in together] == alone
    assert together[1][1] < together[0][1], "the short request did not wait for the long one"
    assert type(tts_server.services[0].batchers[0]).__name__ == "ContinuousBatcher"
