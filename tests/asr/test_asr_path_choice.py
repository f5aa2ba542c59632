"""`decoding=auto` by measurement (services/asr/path_choice.py): the chooser's logic with injected timings, the
runner following it, and answers that do not depend on the path it picks. No test depends on speed."""

import pytest
from opentelemetry.trace import INVALID_SPAN

from services.asr.domain import ASRJob, DecodeOptions
from services.asr.path_choice import MeasuredPathChoice, load_level
from services.asr.runner import ASRRunner


def measured(
    choice: MeasuredPathChoice, assisted: float, plain: float, load: float = 1, times: int = 2
) -> None:
    """`times` decodes of 100 tokens on each path at `load`, at the given seconds per token."""
    for _ in range(times):
        choice.record("assisted", assisted * 100, 100, load=load)
        choice.record("plain", plain * 100, 100, load=load)


def test_load_levels_are_powers_of_two():
    assert [load_level(n) for n in (0, 1, 1.4, 2, 3, 4, 5, 8, 9, 16)] == [1, 1, 1, 2, 4, 4, 8, 8, 16, 16]


def test_it_picks_the_path_measured_faster():
    choice = MeasuredPathChoice()
    measured(choice, assisted=0.010, plain=0.015)
    assert choice.preferred(1) == "assisted"
    measured(choice, assisted=0.010, plain=0.004, load=8)
    assert choice.preferred(1) == "assisted"  # each path's cost is kept per load level
    assert choice.preferred(8) == "plain"


def test_an_assisted_decode_under_load_leaves_the_estimate_alone_unchanged():
    choice = MeasuredPathChoice(smoothing=1.0)
    measured(choice, assisted=0.010, plain=0.011)
    measured(choice, assisted=0.030, plain=0.005, load=8)  # busy cores: the assistant is slow there
    assert choice.estimate("assisted", 1).seconds_per_token == pytest.approx(0.010)
    assert choice.preferred(1) == "assisted"


def test_warm_up_seeds_every_load_level_until_it_is_measured():
    choice = MeasuredPathChoice()
    choice.estimate("plain", 8)  # a level looked at before warm-up ends
    choice.seed("plain", 0.6, 5)
    assert choice.estimate("plain", 8).seconds_per_token == pytest.approx(0.12)
    assert choice.estimate("plain", 4).seconds_per_token == pytest.approx(0.12)
    choice.record("plain", 1.0, 100, load=4)
    assert choice.estimate("plain", 4).seconds_per_token == pytest.approx(0.01)
    assert choice.estimate("plain", 8).seconds_per_token == pytest.approx(0.12)


def test_each_path_is_measured_live_before_the_estimates_decide():
    choice = MeasuredPathChoice(min_samples=2)
    choice.seed("assisted", 0.5, 5)
    choice.seed("plain", 0.6, 5)
    picks = []
    for _ in range(4):
        path = choice.choose(1)
        picks.append(path)
        choice.record(path, 1.0 if path == "assisted" else 0.5, 100)  # live: plain is the faster one
    assert sorted(picks) == ["assisted", "assisted", "plain", "plain"]
    assert picks[0] == "assisted"  # the seeds decided the first
    assert choice.choose(1) == "plain"


def test_it_explores_the_other_path_less_often_while_explorations_confirm_the_choice():
    choice = MeasuredPathChoice(explore_every=4)
    measured(choice, assisted=0.010, plain=0.020)
    picks = [choice.choose(1) for _ in range(100)]
    # The 4th decision, then twice as far apart each time, up to 8 x 4.
    assert [i + 1 for i, path in enumerate(picks) if path == "plain"] == [4, 8, 16, 32, 64, 96]
    assert choice.preferred(1) == "assisted"  # looking does not count as a decision


def test_a_changed_preference_brings_explorations_back_to_every_nth():
    choice = MeasuredPathChoice(smoothing=1.0, explore_every=4)
    measured(choice, assisted=0.010, plain=0.020)
    picks = [choice.choose(1) for _ in range(32)]  # explorations at 4, 8, 16, 32
    choice.record("plain", 0.005 * 100, 100)  # plain is now the faster one
    picks += [choice.choose(1) for _ in range(40)]
    explorations = [i + 1 for i, path in enumerate(picks) if path == "assisted" and i >= 32]
    assert explorations[:2] == [64, 68]  # the one scheduled, then every 4th again: 64 found another preference


def test_it_adapts_when_the_measurements_flip():
    choice = MeasuredPathChoice(smoothing=0.5, explore_every=4)
    measured(choice, assisted=0.010, plain=0.020)
    picks = []
    for _ in range(16):
        path = choice.choose(1)
        picks.append(path)
        # The machine changed: the assistant now costs three times what plain decoding does.
        choice.record(path, 0.030 * 100 if path == "assisted" else 0.010 * 100, 100)
    assert picks[0] == "assisted"
    assert picks[-4:].count("plain") >= 3  # an exploration of plain measured it faster, and it stayed


def test_a_seed_is_replaced_by_the_first_live_measurement():
    choice = MeasuredPathChoice()
    choice.seed("plain", 10.0, 1)
    choice.record("plain", 1.0, 100)
    assert choice.estimate("plain").seconds_per_token == pytest.approx(0.01)
    choice.seed("plain", 10.0, 1)  # seeds never override live measurements
    assert choice.estimate("plain").seconds_per_token == pytest.approx(0.01)


def test_the_runner_follows_the_measurements(make_asr_settings, audio):
    runner = ASRRunner(make_asr_settings(path_choice="measured"))
    runner.assistant = object()  # loaded or not, only its presence decides
    auto = ASRJob(audio(2.0, seed=71))
    measured(runner.path_choice, assisted=0.010, plain=0.020)
    measured(runner.path_choice, assisted=0.010, plain=0.002, load=8)
    assert runner.choose_path([auto]) == "assisted"
    assert runner.choose_path([auto] * 2, queued=6) == "plain"
    assert not runner.step_decodable(auto, waiting=1)  # alone: assisted, whole-request
    assert runner.step_decodable(auto, waiting=8)  # under load: plain, in the decode loop
    assert runner.choose_path([ASRJob(audio(2.0, seed=71), decoding="plain")]) == "plain"


class FakeWork:
    def __init__(self, payload: ASRJob):
        self.payload, self.cancelled, self.span, self.queue_depth = payload, False, INVALID_SPAN, 0


@pytest.fixture(scope="module")
def runner(make_asr_settings):
    runner = ASRRunner(make_asr_settings(path_choice="measured", continuous_batching=False))
    runner.load()
    runner.warmup()
    return runner


def test_an_assisted_decode_is_filed_under_the_requests_that_arrived_while_it_ran(runner, audio):
    runner.path_choice = MeasuredPathChoice(explore_every=1000)
    measured(runner.path_choice, assisted=0.001, plain=1.0)

    class ArrivingWork(FakeWork):
        reads = 0

        @property
        def queue_depth(self):  # alone when decided; seven more queued by the time it ends
            self.reads += 1
            return 0 if self.reads == 1 else 7

        @queue_depth.setter
        def queue_depth(self, _):
            pass

    (answer,) = runner.predict_batch([ArrivingWork(ASRJob(audio(2, seed=81), DecodeOptions(), "en"))])
    assert answer.path == "assisted"
    assert runner.path_choice.estimate("assisted", 1).samples == 2  # only the two recorded above
    assert runner.path_choice.estimate("assisted", 8).samples == 1


def test_warmup_seeds_both_paths(runner):
    assert runner.path_choice.estimate("assisted").seconds_per_token is not None
    assert runner.path_choice.estimate("plain").seconds_per_token is not None


@pytest.mark.parametrize("language", ["en", None], ids=["language", "detected"])
def test_auto_answers_what_plain_answers_whichever_path_it_takes(runner, audio, language):
    jobs = [ASRJob(audio(3, seed=80 + i), DecodeOptions(), language) for i in range(3)]
    plain = [runner.transcribe([job], "plain")[0] for job in jobs]
    for faster in ("assisted", "plain"):
        slower = "plain" if faster == "assisted" else "assisted"
        runner.path_choice = MeasuredPathChoice(explore_every=1000)
        measured(runner.path_choice, **{faster: 0.001, slower: 1.0})
        answers = runner.predict_batch([FakeWork(job) for job in jobs[:1]])
        answers += runner.predict_batch([FakeWork(job) for job in jobs[1:]])
        assert [answer.path for answer in answers][:1] == [faster]
        assert [answer.tokens for answer in answers] == [t.tokens for t in plain]
        assert [answer.language for answer in answers] == [t.language for t in plain]


def test_a_detected_language_costs_one_encoder_pass(runner, audio):
    passes = []
    hook = runner.model.model.encoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        for path in ("plain", "assisted"):
            passes.clear()
            runner.transcribe([ASRJob(audio(3, seed=90), DecodeOptions(), None)], path)
            assert len(passes) == 1, path
    finally:
        hook.remove()


def test_a_path_measured_only_a_little_faster_does_not_take_over():
    choice = MeasuredPathChoice(smoothing=1.0, explore_every=1000)
    measured(choice, assisted=0.010, plain=0.020)
    assert choice.choose(1) == "assisted"
    choice.record("plain", 0.0098 * 100, 100)  # 2 % faster: within the margin, the choice stays
    assert choice.choose(1) == "assisted"
    choice.record("plain", 0.0090 * 100, 100)  # 10 % faster: it switches
    assert choice.choose(1) == "plain"
    choice.record("assisted", 0.0088 * 100, 100)  # and stays unless assisted beats it by the margin too
    assert choice.choose(1) == "plain"
