"""Texts are tokenized once per request: the ids made while the request is checked are what the encoder gets, the
same tensors as tokenizing the texts again, and the translations do not change."""

import torch
from transformers import FSMTTokenizer

from services.translation.decoding import encoder_inputs
from services.translation.runner import GenerationOptions, TranslationRunner
from services.translation.schemas import TranslateRequest, build_job
from services.translation.settings import TranslationSettings

PAIR = "en-de"
TEXTS = ["Hello world.", "a", "Machine learning is great, isn't it? Grüße!", "zzz qqq xxx 123 456"]


def test_ids_made_at_the_check_give_the_encoder_the_same_tensors(models_dir):
    tokenizer = FSMTTokenizer.from_pretrained(models_dir / "translation" / "wmt19-en-de")
    ids = [tuple(text_ids) for text_ids in tokenizer(TEXTS)["input_ids"]]
    tokenized = tokenizer(TEXTS, return_tensors="pt", padding=True)
    from_ids = encoder_inputs(tokenizer, TEXTS, ids)
    assert from_ids.keys() == tokenized.keys()
    assert all(torch.equal(from_ids[name], tokenized[name]) for name in tokenized)
    # Without ids for every text (a job made elsewhere), the texts are tokenized.
    assert torch.equal(encoder_inputs(tokenizer, TEXTS, ids[:1])["input_ids"], tokenized["input_ids"])


def test_a_checked_job_translates_as_its_texts(models_dir):
    settings = TranslationSettings(models={PAIR: str(models_dir / "translation" / "wmt19-en-de")}, threads=1)
    runner = TranslationRunner(settings)
    runner.load()
    job = build_job(TranslateRequest(text=TEXTS, source_lang="en", target_lang="de"), settings, runner)
    assert job.source_tokens == tuple(len(ids) for ids in job.source_ids)
    options = GenerationOptions(num_beams=1, max_new_tokens=8)
    assert runner.translate(PAIR, TEXTS, options, source_ids=list(job.source_ids)) == runner.translate(
        PAIR, TEXTS, options
    )
