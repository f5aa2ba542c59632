"""The cheap draft on real whisper-base weights (`make real-asr`): whatever the restricted, int8 draft proposes,
the transcript is the main model's own, token for token, and the draft is good enough to be worth running."""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoModelForCausalLM, WhisperProcessor
from transformers.modeling_outputs import BaseModelOutput

from services.asr.drafting import DraftConfig, Drafter, WhisperWithDraftLoop, draft_vocabulary
from services.kit.torch_models import use_few_row_linears

REAL = Path(__file__).resolve().parents[2] / "models" / "real"

pytestmark = [
    pytest.mark.realmodels,
    pytest.mark.skipif(
        not (REAL / "whisper-base" / "model.safetensors").is_file()
        or not (REAL / "speech" / "refs.tsv").is_file(),
        reason="real whisper-base and speech are absent: run `make real-asr`",
    ),
]

# English clips all, plus a few of the (much worse transcribed) German and French ones.
CLIP_LANGS = {"en": None, "de": 3, "fr": 3}
RESTRICTED = DraftConfig(num_tokens=6, vocab_size=8192)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)  # the machine is shared: one thread measures work, not contention
    processor = WhisperProcessor.from_pretrained(REAL / "whisper-base")
    main = WhisperWithDraftLoop.from_pretrained(REAL / "whisper-base", dtype=torch.float32).eval()
    assistant = AutoModelForCausalLM.from_pretrained(
        REAL / "whisper-base-assistant-2l", dtype=torch.float32
    ).eval()
    return processor, main, assistant


def clips() -> list[tuple[str, str, np.ndarray]]:
    taken: dict[str, int] = {}
    found = []
    for line in (REAL / "speech" / "refs.tsv").read_text(encoding="utf-8").splitlines():
        clip_id, lang, _voice, _text = line.split("\t")
        limit = CLIP_LANGS.get(lang, 0)
        if limit is not None and taken.get(lang, 0) >= limit:
            continue
        taken[lang] = taken.get(lang, 0) + 1
        audio, _ = sf.read(REAL / "speech" / f"{clip_id}.wav", dtype="float32")
        found.append((clip_id, lang, audio))
    return found


def test_draft_vocabulary_recipe(models):
    processor, main, _ = models
    tokenizer, suppress = processor.tokenizer, main.generation_config.suppress_tokens
    ids = draft_vocabulary(tokenizer, 8192, counts=[3322, 220, 40000], exclude=suppress)
    assert (
        len(ids) == 8192
        and ids == sorted(ids)
        and ids == draft_vocabulary(tokenizer, 8192, counts=[3322, 220, 40000], exclude=suppress)
    )
    specials = set(tokenizer.added_tokens_decoder) - set(suppress)
    assert specials <= set(ids), "every special and timestamp token can be drafted"
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") in ids and tokenizer.eos_token_id in ids
    assert not set(suppress) & set(ids), "suppressed tokens are never drafted"
    assert 40000 in ids, "ids from the counts file come before plain low ids"
    assert set(range(256)) - set(suppress) <= set(ids), "every byte token is there"
    with pytest.raises(ValueError, match="cannot hold"):
        draft_vocabulary(tokenizer, 1000)


@contextmanager
def few_row_kernels(*models):
    """The service's CPU kernels (kit FewRowLinear) for the duration, torch's stock ones after."""
    for model in models:
        use_few_row_linears(model)
    try:
        yield
    finally:
        for model in models:
            use_few_row_linears(model, enabled=False)


@pytest.mark.parametrize("config", [RESTRICTED], ids=["int8-8192-rows"])
def test_restricted_draft_and_few_row_kernels_give_the_main_models_tokens_on_every_clip(models, config):
    """Reference: plain decoding with torch's stock kernels. The service's paths (few-row kernels, plain and
    assisted with the restricted int8 draft) must give the same token ids on every clip."""
    processor, main, assistant = models
    main.drafter = Drafter.build(main, assistant, processor.tokenizer, config)
    assert main.drafter.head_rows == 8192 and main.drafter.shared_cross_attention == {0: 0, 1: 5}
    passes = {"n": 0}
    hook = main.model.decoder.register_forward_hook(lambda *_: passes.__setitem__("n", passes["n"] + 1))
    plain_passes = 0
    differing, tokens = [], 0
    try:
        with torch.inference_mode():
            for clip_id, lang, audio in clips():
                features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
                encoded = BaseModelOutput(last_hidden_state=main.model.encoder(features).last_hidden_state)
                before = passes["n"]
                plain = main.generate(encoder_outputs=encoded, language=lang, task="transcribe")[0].tolist()
                plain_passes += passes["n"] - before
                with few_row_kernels(main, assistant):
                    plain_few_row = main.generate(encoder_outputs=encoded, language=lang, task="transcribe")
                    assisted = main.generate(
                        encoder_outputs=encoded, language=lang, task="transcribe", assistant_model=assistant
                    )
                tokens += len(plain)
                for name, ids in (("plain, few-row", plain_few_row), ("assisted, few-row", assisted)):
                    if ids[0].tolist() != plain:
                        differing.append((clip_id, name, plain, ids[0].tolist()))
    finally:
        hook.remove()
    drafted, accepted, rounds = main.drafter.counters()
    main.drafter = None
    assert not differing, f"the transcript changed: {differing}"
    acceptance = accepted / drafted
    print(
        f"\n{tokens} tokens; plain {plain_passes} main passes, assisted {rounds} rounds; "
        f"drafted {drafted}, accepted {accepted} ({acceptance:.2f})"
    )
    assert acceptance > 0.3, "the restricted draft should propose what the main model picks"
    assert rounds < 0.6 * plain_passes, "drafting should save main-model passes"


def test_long_form_with_timestamps_matches_plain(models):
    """Over 30 s: Whisper's sequential long-form loop runs a generate() (and a draft loop) per window."""
    processor, main, assistant = models
    pieces = [audio for clip_id, lang, audio in clips() if lang == "en"][:12]
    silence = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([part for piece in pieces for part in (piece, silence)])
    assert len(audio) > 35 * 16000
    inputs = processor(
        audio,
        sampling_rate=16000,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    main.drafter = Drafter.build(main, assistant, processor.tokenizer, RESTRICTED)
    kwargs = dict(
        attention_mask=inputs.attention_mask, language="en", task="transcribe", return_timestamps=True
    )
    try:
        with torch.inference_mode():
            plain = main.generate(inputs.input_features, **kwargs)[0].tolist()
            assisted = main.generate(inputs.input_features, assistant_model=assistant, **kwargs)[0].tolist()
    finally:
        main.drafter = None
    assert assisted == plain
    text = processor.decode(plain, skip_special_tokens=True).lower()
    assert "lazy dog" in text and "library" in text  # the first and the last clip joined
    assert any(t >= processor.tokenizer.convert_tokens_to_ids("<|0.00|>") for t in plain), "timestamps kept"
