"""Assisted decoding is the main model's greedy decoding, token for token, on the tiny pair with drafting forced
on; batched plain decoding gives the same tokens as decoding alone. In-process runner, no server."""

import json
import shutil

import pytest
import torch
from opentelemetry.trace import INVALID_SPAN
from prometheus_client import REGISTRY
from transformers import (
    WhisperConfig,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from services.asr.domain import ASRJob, DecodeOptions
from services.asr.drafting import DraftLoop
from services.asr.runner import ASRRunner
from services.kit.errors import Cancelled, InvalidArgument

# (seconds, language or None to detect, options): short and long-form, several languages, both tasks,
# timestamps and prompts.
CASES = [
    (1.0, None, DecodeOptions()),
    (2.5, "en", DecodeOptions()),
    (4.0, "de", DecodeOptions()),
    (6.0, "ru", DecodeOptions()),
    (9.0, "fr", DecodeOptions(task="translate")),
    (3.0, None, DecodeOptions(task="translate")),
    (12.0, "ja", DecodeOptions()),
    (5.0, "es", DecodeOptions(timestamps=True)),
    (7.5, None, DecodeOptions(timestamps=True, task="translate")),
    (4.5, "en", DecodeOptions(prompt="hello world the weather today")),
    (20.0, "it", DecodeOptions()),
    (29.9, None, DecodeOptions()),
    (31.5, "en", DecodeOptions()),
    (47.0, None, DecodeOptions(timestamps=True)),
    (62.0, "de", DecodeOptions(task="translate")),
]


@pytest.fixture(scope="module")
def runner(make_asr_settings):
    runner = ASRRunner(make_asr_settings())
    runner.load()
    runner.warmup()
    return runner


@pytest.mark.parametrize(
    "seconds,language,options", CASES, ids=[f"{c[0]}s-{c[1]}-{c[2].task}" for c in CASES]
)
def test_assisted_equals_plain_token_for_token(runner, audio, seconds, language, options):
    job = ASRJob(audio(seconds, seed=int(seconds * 10)), options, language)
    before = (runner.main_passes, *runner.draft_counts())
    plain = runner.transcribe([job], "plain")[0]
    middle = runner.main_passes
    assisted = runner.transcribe([job], "assisted")[0]
    assert assisted.tokens == plain.tokens
    assert assisted.text == plain.text and assisted.language == plain.language
    assert (assisted.path, plain.path) == ("assisted", "plain")
    assert len(plain.tokens) > 5  # something was really decoded
    if options.timestamps:
        assert assisted.segments == plain.segments and plain.segments
    if language:
        assert plain.language == language
    # Drafting really happened, and the main model verified several tokens per pass.
    drafted, accepted = runner.draft_counts()
    assert drafted > before[1] and accepted > before[2]
    plain_passes, assisted_passes = middle - before[0], runner.main_passes - middle
    assert assisted_passes < plain_passes


def test_each_drafted_and_accepted_token_is_counted_once(runner, audio, monkeypatch):
    # What the draft loop really proposed and the main model really kept, seen from outside the counters.
    seen = {"drafted": 0, "accepted": 0}
    get_candidates, update = DraftLoop.get_candidates, DraftLoop.update_candidate_strategy

    def spy_get_candidates(self, input_ids, **kwargs):
        candidates, logits = get_candidates(self, input_ids, **kwargs)
        seen["drafted"] += candidates.shape[1] - input_ids.shape[1]
        return candidates, logits

    def spy_update(self, input_ids, scores, num_matches):
        seen["accepted"] += int(num_matches)
        return update(self, input_ids, scores, num_matches)

    monkeypatch.setattr(DraftLoop, "get_candidates", spy_get_candidates)
    monkeypatch.setattr(DraftLoop, "update_candidate_strategy", spy_update)
    exported = ("asr_draft_tokens_total", "asr_draft_tokens_accepted_total")
    metrics_before = [REGISTRY.get_sample_value(name) for name in exported]
    counts_before = runner.draft_counts()
    runner.transcribe([ASRJob(audio(6.0, seed=61), DecodeOptions(), "en")], "assisted")
    assert seen["drafted"] > 0 and seen["accepted"] > 0
    expected = [seen["drafted"], seen["accepted"]]
    drafted, accepted = runner.draft_counts()
    assert [drafted - counts_before[0], accepted - counts_before[1]] == expected
    metrics_now = [REGISTRY.get_sample_value(name) for name in exported]
    assert [metrics_now[0] - metrics_before[0], metrics_now[1] - metrics_before[1]] == expected
    assert REGISTRY.get_sample_value("asr_draft_acceptance_rate") == pytest.approx(
        metrics_now[1] / metrics_now[0]
    )


def test_long_form_covers_the_whole_clip_with_timestamps(runner, audio):
    job = ASRJob(audio(47.0, seed=470), DecodeOptions(timestamps=True), None)
    segments = runner.transcribe([job], "assisted")[0].segments
    assert segments[0].start < 30 < segments[-1].end <= 47.0
    assert all(s.start <= s.end for s in segments)


def test_batched_plain_decoding_matches_each_request_alone(runner, audio):
    jobs = [
        ASRJob(audio(2 + i, seed=100 + i), DecodeOptions(), lang)
        for i, lang in enumerate(["en", None, "de", None, "ru", "fr"])
    ]
    batched = runner.transcribe(jobs, "plain")
    alone = [runner.transcribe([job], "assisted")[0] for job in jobs]
    assert [t.tokens for t in batched] == [t.tokens for t in alone]
    assert [t.language for t in batched] == [t.language for t in alone]


def test_batched_long_form_matches_each_request_alone(runner, audio):
    jobs = [ASRJob(audio(seconds, seed=200 + seconds), DecodeOptions(), None) for seconds in (33, 41, 58)]
    batched = runner.transcribe(jobs, "plain")
    alone = [runner.transcribe([job], "assisted")[0] for job in jobs]
    assert [t.tokens for t in batched] == [t.tokens for t in alone]


class FakeWork:
    """What the batcher hands the runner, without the asyncio plumbing."""

    def __init__(self, payload: ASRJob, cancelled: bool = False, queue_depths=None):
        self.payload, self.cancelled = payload, cancelled
        self.span = INVALID_SPAN  # tracing off
        self.queue_depths = queue_depths

    @property
    def queue_depth(self) -> int:
        """Requests queued behind the batch, each time the runner asks (as the kit's Work answers)."""
        return next(self.queue_depths) if self.queue_depths is not None else 0


def test_path_choice_follows_the_waiting_requests(runner, audio):
    auto = [ASRJob(audio(1, seed=1))] * 5
    assert runner.settings.adaptive_threshold == 4
    assert [runner.choose_path(auto[:n]) for n in range(1, 6)] == ["assisted"] * 4 + ["plain"]
    assert runner.choose_path([ASRJob(audio(1, seed=1), decoding="plain")]) == "plain"
    assert runner.choose_path([ASRJob(audio(1, seed=1), decoding="assisted")] * 6) == "assisted"
    # Requests queued behind a batch count as waiting too; a request alone still gets the assistant.
    assert [runner.choose_path(auto[:n], queued=3) for n in (1, 2)] == ["assisted", "plain"]


def test_a_batch_switches_to_plain_when_requests_pile_up_during_assisted_decoding(runner, audio):
    queue_depths = iter([0, 9, 9, 9])  # the decisions' reads, and what the assisted decode ran under
    works = [FakeWork(ASRJob(audio(2, seed=30 + i), DecodeOptions(), "en"), queue_depths=queue_depths) for i in range(3)]
    results = runner.predict_batch(works)
    assert [r.path for r in results] == ["assisted", "plain", "plain"]
    assert [r.tokens for r in results] == [runner.transcribe([w.payload], "plain")[0].tokens for w in works]


def test_forced_paths_and_long_audio_never_share_a_batch_with_auto_requests(audio):
    short, long = audio(2, seed=3), audio(31, seed=3)
    auto_a, auto_b = ASRJob(short, DecodeOptions(), "en"), ASRJob(short, DecodeOptions(), None)
    assert auto_a.batch_key == auto_b.batch_key  # languages may differ within a batch
    assert ASRJob(short, decoding="plain").batch_key != auto_a.batch_key
    assert ASRJob(long).batch_key != auto_a.batch_key
    assert ASRJob(short, DecodeOptions(timestamps=True)).batch_key != auto_a.batch_key


def test_languages_by_code_or_name_and_unknown_ones_refused(runner):
    assert runner.language_code("English") == "en" and runner.language_code("<|de|>") == "de"
    assert runner.language_code(None) is None
    with pytest.raises(InvalidArgument, match="unknown language 'klingon'"):
        runner.language_code("klingon")


def _save_tiny_whisper(path, config: WhisperConfig, processor_dir=None, causal=False) -> None:
    torch.manual_seed(0)
    model = (WhisperForCausalLM if causal else WhisperForConditionalGeneration)(config)
    model.save_pretrained(path)
    if processor_dir is not None:
        WhisperProcessor.from_pretrained(processor_dir).save_pretrained(path)


def test_an_assistant_with_another_vocabulary_is_refused_at_start_up(
    make_asr_settings, whisper_dirs, tmp_path
):
    main_dir, _ = whisper_dirs
    config = WhisperConfig.from_pretrained(main_dir)
    config.vocab_size += 7
    config.decoder_layers = 1
    _save_tiny_whisper(tmp_path, config, causal=True)
    runner = ASRRunner(make_asr_settings(assistant_model=str(tmp_path)))
    with pytest.raises(ValueError, match="vocabulary of .* tokens but the main model"):
        runner.load()


def test_a_smaller_full_whisper_with_the_same_tokenizer_works_as_assistant(
    make_asr_settings, whisper_dirs, tmp_path, audio
):
    main_dir, _ = whisper_dirs
    config = WhisperConfig.from_pretrained(main_dir)
    config.encoder_layers = config.decoder_layers = 1
    _save_tiny_whisper(tmp_path, config, processor_dir=main_dir)
    runner = ASRRunner(make_asr_settings(assistant_model=str(tmp_path)))
    runner.load()
    assert runner.assistant.config.is_encoder_decoder
    job = ASRJob(audio(3, seed=9), DecodeOptions(), "en")
    assert runner.transcribe([job], "assisted")[0].tokens == runner.transcribe([job], "plain")[0].tokens


def test_requests_whose_client_left_are_not_decoded(runner, audio):
    live = FakeWork(ASRJob(audio(2, seed=5), DecodeOptions(), "en"))
    gone = FakeWork(ASRJob(audio(2, seed=6), DecodeOptions(), "en"), cancelled=True)
    passes = runner.main_passes
    results = runner.predict_batch([gone, live])
    assert isinstance(results[0], Cancelled)
    assert results[1].path == "assisted"  # decoded alone: the cancelled one does not count as waiting
    alone_passes = runner.main_passes - passes
    runner.transcribe([live.payload], "assisted")
    assert runner.main_passes - passes == 2 * alone_passes


def test_english_only_checkpoints_take_no_language_or_task_token(
    make_asr_settings, whisper_dirs, tmp_path, audio
):
    main_dir, _ = whisper_dirs
    shutil.copytree(main_dir, tmp_path / "whisper.en")
    config_file = tmp_path / "whisper.en" / "generation_config.json"
    config = json.loads(config_file.read_text())
    del config["lang_to_id"], config["task_to_id"]  # as in the real whisper-*.en checkpoints
    config_file.write_text(json.dumps({**config, "is_multilingual": False}))
    runner = ASRRunner(make_asr_settings(model=str(tmp_path / "whisper.en")))
    runner.load()
    assert runner.language_code("english") is None
    with pytest.raises(InvalidArgument, match="English-only"):
        runner.language_code("de")
    job = ASRJob(audio(3, seed=40))
    plain, assisted = runner.transcribe([job], "plain")[0], runner.transcribe([job], "assisted")[0]
    assert plain.language == "en" and plain.tokens == assisted.tokens
