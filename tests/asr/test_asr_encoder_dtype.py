"""`ASR_ENCODER_DTYPE=bfloat16` and `ASR_HEAD_DTYPE=bfloat16`: the audio side (encoder and cross-attention keys and
values) and the vocabulary projection compute in bfloat16 while the rest of the decoder's steps stay float32, and
every decoding path still gives the same tokens as the others: plain and assisted, whole-request and the
continuous loop (its own language detection included)."""

import asyncio

import httpx
import pytest
import torch

from services.asr.continuous import ContinuousDecoding
from services.asr.domain import ASRJob, DecodeOptions
from services.asr.runner import ASRRunner
from services.asr.service import create_service
from services.kit.testing import ServerThread, standalone_work


@pytest.fixture(scope="module")
def runner(make_asr_settings):
    runner = ASRRunner(make_asr_settings(encoder_dtype="bfloat16", head_dtype="bfloat16"))
    runner.load()
    runner.warmup()
    return runner


def test_only_the_audio_side_and_the_head_are_lowered(runner):
    model = runner.model.model
    assert runner.encoder_dtype == runner.head_dtype == "bfloat16"
    assert runner.model.proj_out.weight.dtype == torch.bfloat16
    assert model.decoder.embed_tokens.weight.dtype == torch.float32  # the head was tied to it: now untied
    assert {p.dtype for p in model.encoder.parameters()} == {torch.bfloat16}
    for layer in model.decoder.layers:
        assert layer.encoder_attn.k_proj.weight.dtype == torch.bfloat16
        assert layer.encoder_attn.v_proj.weight.dtype == torch.bfloat16
        assert layer.encoder_attn.q_proj.weight.dtype == torch.float32
        assert layer.self_attn.k_proj.weight.dtype == torch.float32
        assert layer.fc1.weight.dtype == torch.float32
    for layer in runner.assistant.model.decoder.layers:  # the assistant reads the same encoder output
        assert layer.encoder_attn.k_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "seconds,language,options",
    [(6.0, None, DecodeOptions()), (11.0, "de", DecodeOptions(timestamps=True)), (45.0, None, DecodeOptions())],
    ids=["detected", "timestamps", "long-form"],
)
def test_assisted_still_equals_plain_token_for_token(runner, audio, seconds, language, options):
    job = ASRJob(audio(seconds, seed=int(seconds * 3)), options, language)
    plain = runner.transcribe([job], "plain")[0]
    assisted = runner.transcribe([job], "assisted")[0]
    assert len(plain.tokens) > 5
    assert assisted.tokens == plain.tokens and assisted.language == plain.language
    if options.timestamps:
        assert assisted.segments == plain.segments


def test_the_continuous_loop_detects_the_language_and_decodes_as_a_request_alone(runner, audio):
    loop_events = asyncio.new_event_loop()
    try:
        jobs = [ASRJob(audio(seconds, seed=seed)) for seconds, seed in ((4.0, 31), (9.0, 32), (2.5, 33))]
        jobs.append(ASRJob(audio(5.0, seed=34), language="fr"))
        works = [standalone_work(job, job.batch_key, loop_events) for job in jobs]
        alone = [runner.predict_batch([work])[0] for work in works]
        detected = runner.detect_languages(jobs, runner.features(jobs).input_features)
        loop = ContinuousDecoding(runner).open_loop(jobs[0].batch_key, jobs[0], waiting=16)  # plain at this load
        loop.join(works)
        results = {}
        while loop.running:
            results.update((id(work), result) for work, result in loop.step())
    finally:
        loop_events.close()
    for work, expected, language in zip(works, alone, detected, strict=True):
        got = results[id(work)]
        assert got.tokens == expected.tokens and got.text == expected.text
        assert got.language == expected.language == language
    assert detected[3] == "fr"


def test_int8_keeps_them_float32_and_the_models_list_says_what_runs(make_asr_settings):
    quantized = ASRRunner(
        make_asr_settings(assistant_model="", quantize="int8", encoder_dtype="bfloat16", head_dtype="bfloat16")
    )
    quantized.load()
    assert quantized.encoder_dtype == quantized.head_dtype == "float32"
    assert {p.dtype for p in quantized.model.model.encoder.parameters()} == {torch.float32}

    settings = make_asr_settings(assistant_model="", encoder_dtype="bfloat16", head_dtype="float32")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        (model,) = httpx.get(server.rest_url + "/v1/models", timeout=60).json()["data"]
    assert model["encoder_dtype"] == "bfloat16" and model["head_dtype"] == "float32"
    assert model["quantization"] == "none"
