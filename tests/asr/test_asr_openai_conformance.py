"""OpenAI conformance of the audio API, driven with the official openai SDK through every parameter and value of
its transcription and translation create params (tiny Whisper pair behind a real server on loopback).

Every parameter is honoured (the response shows it) or refused with a 4xx naming it; none is silently ignored.
The tables below must cover every parameter the installed SDK knows: a parameter added to the SDK fails
`test_every_sdk_parameter_is_covered` until it is given a row here.
"""

import json
import re
import typing
import zlib

import grpc
import httpx
import openai
import pytest
import torch
from openai.types.audio import (
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationVerbose,
    transcription_create_params,
    translation_create_params,
)
from openai.types.audio.transcription import Transcription
from openai.types.audio_model import AudioModel
from openai.types.audio_response_format import AudioResponseFormat

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.asr.domain import ASRJob, DecodeOptions
from services.asr.runner import ASRRunner
from services.asr.schemas import OPENAI_DIARIZING_MODELS, OPENAI_MODEL_ALIASES
from services.asr.service import create_service
from services.kit.audio import decode_audio
from services.kit.testing import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates translations

SDK_MODELS = typing.get_args(AudioModel)
DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                  "no_speech_prob")


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings()
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(audio_file):
    return ("clip.wav", audio_file(4, seed=31))


@pytest.fixture(scope="module")
def long_clip(audio_file):
    return ("long.wav", audio_file(40, seed=32))


def transcribe(client, file, **params):
    return client.audio.transcriptions.create(model="whisper-1", file=file, **params)


def translate(client, file, **params):
    return client.audio.translations.create(model="whisper-1", file=file, **params)


def refused(call, name: str, status: type[openai.APIStatusError] = openai.BadRequestError) -> dict:
    """The SDK call fails with `status`, its error naming the parameter; returns the error body."""
    with pytest.raises(status) as caught:
        call()
    error = caught.value.body
    assert name in error["message"] and name in error.get("param", name), error
    return error


def raw_json(client, file, **params) -> dict:
    response = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=file, **params)
    return json.loads(response.text)


# -- the parameter tables -----------------------------------------------------------------------------------------

TRANSCRIPTION_PARAMETERS = {
    "file": "honoured: the audio transcribed (every test)",
    "model": "honoured: every name of the SDK's AudioModel and its dated snapshots, and the served id; "
    "gpt-4o-transcribe-diarize refused (no diarization); other names 404",
    "chunking_strategy": "honoured: Silero VAD chunks of speech decoded as one batch; non-speech dropped",
    "include": "honoured: logprobs with json and streams; refused with other formats",
    "keywords": "refused: not offered (use prompt)",
    "known_speaker_names": "refused: no diarization",
    "known_speaker_references": "refused: no diarization",
    "language": "honoured",
    "languages": "refused: give one language",
    "prompt": "honoured",
    "response_format": "honoured: json, text, srt, verbose_json, vtt; diarized_json refused",
    "stream": "honoured: transcript.text.delta / done events (json and text formats)",
    "temperature": "honoured: sampling above 0; out of [0, 1] refused",
    "timestamp_granularities": "honoured: word, segment, both (verbose_json only)",
}
TRANSLATION_PARAMETERS = {
    "file": "honoured",
    "model": "honoured: the same names as transcriptions",
    "prompt": "honoured",
    "response_format": "honoured: json, text, srt, verbose_json, vtt",
    "temperature": "honoured",
}


def sdk_parameters(params_type) -> set[str]:
    return set(typing.get_type_hints(params_type))


def test_every_sdk_parameter_is_covered():
    transcription = sdk_parameters(transcription_create_params.TranscriptionCreateParamsNonStreaming) | sdk_parameters(
        transcription_create_params.TranscriptionCreateParamsStreaming
    )
    assert transcription == set(TRANSCRIPTION_PARAMETERS)
    assert sdk_parameters(translation_create_params.TranslationCreateParams) == set(TRANSLATION_PARAMETERS)
    assert set(typing.get_args(AudioResponseFormat)) == {"json", "text", "srt", "verbose_json", "vtt", "diarized_json"}


# -- model ---------------------------------------------------------------------------------------------------------


def test_the_served_openai_names_are_the_sdks():
    """One list on the server, checked against the newest SDK's literal: a name OpenAI adds fails here."""
    assert set(OPENAI_MODEL_ALIASES) | set(OPENAI_DIARIZING_MODELS) == {DATED.sub("", m) for m in SDK_MODELS}


# "whisper": the tiny model's own id; dated snapshots of every alias, as OpenAI names its model versions.
@pytest.mark.parametrize(
    "model", sorted({*SDK_MODELS, "whisper", "gpt-transcribe-2026-03-01", "gpt-4o-transcribe-diarize-2025-10-15"})
)
def test_every_sdk_model_name_is_served_or_refused_naming_diarization(client, clip, model):
    if "diarize" in model:
        error = refused(lambda: client.audio.transcriptions.create(model=model, file=clip), "model")
        assert model in error["message"] and "diarization" in error["message"]
    else:
        result = client.audio.transcriptions.create(model=model, file=clip)
        assert isinstance(result, Transcription) and result.text


@pytest.mark.parametrize(
    "model", ["gpt-5-transcribe", "whisper-2", "gpt-4o-transcribe-latest", "gpt-4o-transcribe-2025-12", "tts-1"]
)
def test_other_model_names_are_not_found(client, clip, model):
    error = refused(lambda: client.audio.transcriptions.create(model=model, file=clip), "model", openai.NotFoundError)
    assert model in error["message"]


# -- voice-activity chunking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy", ["auto", {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 200, "silence_duration_ms": 300}]
)
def test_chunking_strategy_drops_what_is_not_speech(client, clip, strategy):
    # The synthetic clip is noise, no speech: the random tiny Whisper invents text for it whole, while
    # voice-activity chunking finds nothing to decode.
    assert transcribe(client, clip).text
    response = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=clip, chunking_strategy=strategy
    )
    assert response.parse().text == ""
    assert response.headers["x-asr-decoding"] == "plain"


# -- refused fields ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params,name",
    [
        (dict(chunking_strategy={"type": "semantic_vad"}), "chunking_strategy"),
        (dict(chunking_strategy={"type": "server_vad", "threshold": 1.5}), "chunking_strategy"),
        (dict(chunking_strategy="auto", extra_body={"decoding": "assisted"}), "decoding"),
        (dict(known_speaker_names=["agent"]), "known_speaker_names[]"),
        (dict(known_speaker_references=["data:audio/wav;base64,AAAA"]), "known_speaker_references[]"),
        (dict(keywords=["Whisper"]), "keywords[]"),
        (dict(languages=["en", "de"]), "languages[]"),
        (dict(response_format="diarized_json"), "response_format"),
        (dict(temperature=1.5), "temperature"),
        (dict(language="klingon"), "language"),
        (dict(include=["logprobs"], response_format="verbose_json"), "include"),
        (dict(include=["logprobs"], response_format="text"), "include"),
        (dict(timestamp_granularities=["word"]), "timestamp_granularities"),
        (dict(timestamp_granularities=["segment"], response_format="srt"), "timestamp_granularities"),
        (dict(stream=True, response_format="verbose_json"), "stream"),
        (dict(stream=True, response_format="srt"), "stream"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_fields_this_server_does_not_honour_are_refused_by_name(client, clip, params, name):
    refused(lambda: transcribe(client, clip, **params), name)


@pytest.fixture(scope="module")
def second(audio_file):
    return audio_file(1, seed=33)


def post_form(server, data: dict, content: bytes, path: str = "/v1/audio/transcriptions") -> httpx.Response:
    files = {"file": ("clip.wav", content, "audio/wav")}
    return httpx.post(server.rest_url + path, data=data, files=files, timeout=60)


@pytest.mark.parametrize(
    "data,name",
    [
        ({"diarize": "true"}, "diarize"),  # not an OpenAI field at all
        ({"language[]": "en"}, "language[]"),  # a one-value field sent as a list
        ({"chunking_strategy[type][x]": "server_vad"}, "chunking_strategy[type][x]"),
        ({"timestamp_granularities[]": "minute", "response_format": "verbose_json"}, "timestamp_granularities"),
        ({"include[]": "scores"}, "include"),
        ({"stream": "perhaps"}, "stream"),
    ],
)
def test_unknown_and_malformed_form_fields_are_refused_by_name(server, second, data, name):
    response = post_form(server, data, second)
    assert response.status_code == 400, response.text
    assert name in response.json()["error"]["message"]


def test_list_fields_are_taken_with_or_without_brackets(server, second):
    for key in ("include", "include[]"):
        response = post_form(server, {key: "logprobs"}, second)
        assert response.status_code == 200 and response.json()["logprobs"]


def test_a_repeated_field_and_a_second_file_are_refused(server, audio_file):
    data = audio_file(1, seed=34)
    url = server.rest_url + "/v1/audio/transcriptions"
    files = [("file", ("a.wav", data, "audio/wav")), ("language", (None, "en")), ("language", (None, "de"))]
    assert httpx.post(url, files=files, timeout=60).json()["error"]["param"] == "language"
    files = [("file", ("a.wav", data, "audio/wav")), ("file", ("b.wav", data, "audio/wav"))]
    assert httpx.post(url, files=files, timeout=60).json()["error"]["param"] == "file"


# -- honoured fields -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "verbose_json", "vtt"])
def test_every_response_format_with_the_sdk_types(client, clip, response_format):
    result = transcribe(client, clip, response_format=response_format)
    text = transcribe(client, clip, response_format="text")
    if response_format == "json":
        assert isinstance(result, Transcription) and result.text == text
        assert result.usage.type == "duration" and result.usage.seconds == pytest.approx(4.0, abs=0.01)
    elif response_format == "verbose_json":  # decoded with timestamps: other tokens than plain text
        assert isinstance(result, TranscriptionVerbose) and result.text and result.duration == pytest.approx(4.0)
    elif response_format == "srt":
        assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", result)
    elif response_format == "vtt":
        assert re.match(r"WEBVTT\n\n00:00:\d\d.\d{3} --> 00:00:\d\d.\d{3}\n\S", result)


@pytest.mark.parametrize("clip_name", ["clip", "long_clip"])
def test_verbose_json_validates_with_complete_segments(client, request, clip_name):
    file = request.getfixturevalue(clip_name)
    body = raw_json(client, file, response_format="verbose_json")
    verbose = TranscriptionVerbose.model_validate(body)  # validated, not merely constructed
    assert verbose.usage.type == "duration" and verbose.usage.seconds == verbose.duration
    assert verbose.segments and verbose.words is None
    for segment in body["segments"]:
        assert set(SEGMENT_FIELDS) <= set(segment) and all(segment[f] is not None for f in SEGMENT_FIELDS), segment
    for segment in verbose.segments:
        assert segment.temperature == 0.0 and segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
        assert segment.compression_ratio > 0 and segment.tokens
    # The usual hallucination filter of OpenAI users runs on them.
    kept = [s for s in verbose.segments if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1)]
    assert kept
    # seek: the mel frame (100 a second) where the segment's 30 s window starts.
    seeks = [s.seek for s in verbose.segments]
    assert seeks == sorted(seeks) and all(s.seek <= round(s.start * 100) for s in verbose.segments)
    if clip_name == "long_clip":
        assert seeks[-1] > 0


def test_window_statistics_are_computed_as_openai_whisper_computes_them(server, clip):
    """Recomputed independently from the model: token log-probabilities (transformers' own transition scores of
    a plain generate()), their mean with end-of-text (avg_logprob), the zlib ratio of the text, and <|nospeech|>'s
    probability right after <|startoftranscript|> in one teacher-forced pass."""
    runner = server.services[0].runner
    audio = decode_audio(clip[1])
    job = ASRJob(audio, DecodeOptions(timestamps=True), "en", window_stats=True, logprobs=True)
    transcript = runner.transcribe([job], "plain", record=False)[0]
    [segment] = transcript.segments  # one segment: random weights rarely emit timestamp pairs
    features = runner.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        reference = runner.model.generate(features, language="en", task="transcribe", return_timestamps=True,
                                          max_new_tokens=40, output_scores=True, return_dict_in_generate=True)
        sequence = reference["segments"][0][0]["result"]["sequences"]
        scores = reference["segments"][0][0]["result"]["scores"]
        generated = sequence[-len(scores) :]
        steps = runner.model.compute_transition_scores(
            generated[None], tuple(step[None] for step in scores), normalize_logits=True
        )[0]
        sot = torch.tensor([[runner.model.generation_config.decoder_start_token_id]])
        sot_logits = runner.model(features, decoder_input_ids=sot).logits
    generated = generated.tolist()
    eot = runner.processor.tokenizer.eos_token_id
    assert generated[: len(segment.tokens)] == list(segment.tokens)
    assert segment.avg_logprob == pytest.approx(float(steps.mean()), abs=1e-4)  # end-of-text included
    text_steps = [float(lp) for t, lp in zip(generated, steps, strict=False) if t < eot][: len(transcript.logprobs)]
    assert [t.logprob for t in transcript.logprobs] == pytest.approx(text_steps, abs=1e-4)
    text = transcript.text.encode()
    assert segment.compression_ratio == pytest.approx(len(text) / len(zlib.compress(text)))
    no_speech = sot_logits[0, 0].softmax(-1)[runner.no_speech_token]
    assert segment.no_speech_prob == pytest.approx(float(no_speech), rel=1e-3)


@pytest.mark.parametrize(
    "granularities,words,segments",
    [(["word"], True, False), (["segment"], False, True), (["word", "segment"], True, True)],
)
def test_timestamp_granularities(client, clip, granularities, words, segments):
    body = raw_json(client, clip, response_format="verbose_json", timestamp_granularities=granularities)
    verbose = TranscriptionVerbose.model_validate(body)
    assert (verbose.words is not None, verbose.segments is not None) == (words, segments)
    if words:
        assert verbose.words and all(w.word and 0 <= w.start <= w.end <= verbose.duration for w in verbose.words)
        starts = [w.start for w in verbose.words]
        assert starts == sorted(starts)
        assert " ".join(w.word for w in verbose.words).split() == verbose.text.split()


@pytest.mark.parametrize("seconds,seed", [(4, 31), (3, 3), (6, 35)])
def test_no_word_is_empty(client, audio_file, seconds, seed):
    # These clips make the tiny model decode lone-space tokens, which the aligner counts as words.
    body = raw_json(client, ("clip.wav", audio_file(seconds, seed)), language="en", response_format="verbose_json",
                    timestamp_granularities=["word"])
    assert body["words"] and [w for w in body["words"] if not w["word"].strip()] == []


def test_word_timestamps_are_the_same_on_both_decoding_paths(server, audio_file):
    data = audio_file(6, seed=35)
    fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"], "language": "en"}
    bodies = {}
    for decoding in ("assisted", "plain"):
        files = {"file": ("clip.wav", data, "audio/wav")}
        response = httpx.post(server.rest_url + "/v1/audio/transcriptions", data={**fields, "decoding": decoding},
                              files=files, timeout=60)
        bodies[decoding] = response.json()
        assert bodies[decoding]["decoding"] == decoding
    assert bodies["assisted"]["words"] == bodies["plain"]["words"] and bodies["plain"]["words"]


def test_include_logprobs(client, clip):
    result = transcribe(client, clip, include=["logprobs"])
    plain = transcribe(client, clip)
    assert plain.logprobs is None and result.text == plain.text
    assert result.logprobs and all(t.logprob <= 0 and t.token and t.bytes for t in result.logprobs)
    spoken = b"".join(bytes(int(b) for b in t.bytes) for t in result.logprobs)
    assert spoken.decode("utf-8", errors="replace").strip() == result.text


def test_language_prompt_and_temperature(client, clip):
    greedy = transcribe(client, clip, language="en")
    assert transcribe(client, clip, language="en", temperature=0.0).text == greedy.text
    assert transcribe(client, clip, language="de").text != greedy.text
    assert transcribe(client, clip, language="en", prompt="weather today").text != greedy.text
    sampled = [transcribe(client, clip, language="en", temperature=1.0).text for _ in range(2)]
    assert any(text != greedy.text for text in sampled)
    verbose = transcribe(client, clip, language="en", temperature=0.7, response_format="verbose_json")
    assert [s.temperature for s in verbose.segments] == pytest.approx([0.7] * len(verbose.segments))


def test_stream_events_parse_with_the_sdk(client, long_clip):
    stream = transcribe(client, long_clip, stream=True, include=["logprobs"], language="en")
    events = list(stream)
    deltas = [e for e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.type == "transcript.text.done"
    assert len(deltas) >= 2, "a delta per decoded 30 s window"
    assert all(e.type == "transcript.text.delta" for e in deltas)
    assert "".join(e.delta for e in deltas).strip() == done.text
    assert done.text == transcribe(client, long_clip, language="en").text
    assert done.logprobs and [t.logprob for e in deltas for t in e.logprobs] == [t.logprob for t in done.logprobs]


def test_stream_with_text_format_and_without_logprobs(client, clip):
    events = list(transcribe(client, clip, stream=True, response_format="text"))
    assert [e.type for e in events][-1] == "transcript.text.done" and events[-1].logprobs is None
    assert all(e.logprobs is None for e in events)
    assert "".join(e.delta for e in events[:-1]).strip() == events[-1].text == transcribe(client, clip).text


def test_stream_refusals_come_before_the_stream_starts(server, audio_file):
    files = {"file": ("clip.wav", audio_file(91, seed=36, rate=8000), "audio/wav")}
    response = httpx.post(server.rest_url + "/v1/audio/transcriptions", data={"stream": "true"}, files=files,
                          timeout=60)
    assert response.status_code == 413 and response.headers["content-type"].startswith("application/json")


# -- translations --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "verbose_json", "vtt"])
def test_translation_formats(client, clip, response_format):
    result = translate(client, clip, response_format=response_format, prompt="the weather", temperature=0)
    if response_format == "verbose_json":
        assert isinstance(result, TranslationVerbose) and result.language == "english" and result.segments
        assert all(s.avg_logprob is not None and s.no_speech_prob is not None for s in result.segments)
    elif response_format == "json":
        assert result.text and result.text != transcribe(client, clip, prompt="the weather").text
    else:
        assert isinstance(result, str) and result


@pytest.mark.parametrize(
    "extra,name",
    [({"include[]": ["logprobs"]}, "include[]"), ({"timestamp_granularities[]": ["word"]}, "timestamp_granularities[]"),
     ({"chunking_strategy": "auto"}, "chunking_strategy")],
)
def test_translations_refuse_transcription_only_fields(server, audio_file, extra, name):
    files = {"file": ("clip.wav", audio_file(1, seed=37), "audio/wav")}
    response = httpx.post(server.rest_url + "/v1/audio/translations", data=extra, files=files, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == name


def test_translation_model_and_temperature_refusals(client, clip):
    refused(lambda: translate(client, clip, temperature=2), "temperature")
    error = refused(lambda: client.audio.translations.create(model="gpt-4o-transcribe-diarize", file=clip), "model")
    assert "diarization" in error["message"]
    refused(lambda: client.audio.translations.create(model="whisper-2", file=clip), "model", openai.NotFoundError)
    assert client.audio.translations.create(model="gpt-4o-mini-transcribe", file=clip).text
    assert client.audio.translations.create(model="gpt-4o-mini-transcribe-2025-12-15", file=clip).text


# -- gRPC ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.SpeechRecognitionStub(channel)


def test_grpc_segments_words_and_logprobs_match_rest(client, stub, clip):
    options = pb.TranscribeOptions(language="en", word_timestamps=True, logprobs=True)
    reply = stub.Transcribe(pb.TranscribeRequest(audio=clip[1], options=options), timeout=60)
    rest = transcribe(client, clip, language="en", response_format="verbose_json",
                      timestamp_granularities=["word", "segment"])
    assert [(w.word, w.start, w.end) for w in reply.words] == [(w.word, w.start, w.end) for w in rest.words]
    assert [(s.seek, list(s.tokens)) for s in reply.segments] == [(s.seek, s.tokens) for s in rest.segments]
    assert [s.avg_logprob for s in reply.segments] == pytest.approx([s.avg_logprob for s in rest.segments])
    options = pb.TranscribeOptions(language="en", logprobs=True)
    reply = stub.Transcribe(pb.TranscribeRequest(audio=clip[1], options=options), timeout=60)
    logprobs = transcribe(client, clip, language="en", include=["logprobs"]).logprobs
    assert [(t.token, list(t.bytes)) for t in reply.logprobs] == [(t.token, t.bytes) for t in logprobs]
    assert [t.logprob for t in reply.logprobs] == pytest.approx([t.logprob for t in logprobs])


def test_grpc_transcribe_updates_streams_window_deltas(stub, long_clip):
    request = pb.TranscribeRequest(audio=long_clip[1], options=pb.TranscribeOptions(language="en"))
    updates = list(stub.TranscribeUpdates(request, timeout=120))
    deltas = [u.delta.text for u in updates if u.WhichOneof("update") == "delta"]
    assert updates[-1].WhichOneof("update") == "done" and len(deltas) >= 2
    done = updates[-1].done
    assert "".join(deltas).strip() == done.text and done.duration == pytest.approx(40.0)
    assert done.text == stub.Transcribe(request, timeout=120).text


@pytest.mark.parametrize(
    "model,code",
    [("gpt-4o-transcribe-diarize", grpc.StatusCode.INVALID_ARGUMENT), ("whisper-2", grpc.StatusCode.NOT_FOUND)],
)
def test_grpc_transcribe_updates_refuses_like_transcribe(stub, clip, model, code):
    request = pb.TranscribeRequest(audio=clip[1], options=pb.TranscribeOptions(model=model))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.TranscribeUpdates(request, timeout=60))
    assert caught.value.code() == code and "model" in caught.value.details()


def test_grpc_serves_the_current_openai_names(stub, clip):
    for model in ("gpt-transcribe", "gpt-4o-mini-transcribe-2025-12-15"):
        reply = stub.Transcribe(pb.TranscribeRequest(audio=clip[1], options=pb.TranscribeOptions(model=model)),
                                timeout=60)
        assert reply.text


# -- temperature fallback ------------------------------------------------------------------------------------------


def test_temperature_fallback_as_openai_whisper(make_asr_settings, audio):
    """With fallback temperatures set, a window failing the thresholds is decoded again hotter (the tiny model's
    random tokens always average below -1), and a window judged silent is dropped. Off (the default), a window
    is decoded once, greedily."""
    clip = audio(3, seed=38)
    job = ASRJob(clip, DecodeOptions(timestamps=True), "en", window_stats=True)
    runner = ASRRunner(make_asr_settings(assistant_model="", fallback_temperatures=(0.2, 0.4)))
    runner.load()
    hotter = runner.transcribe([job], "plain", record=False)[0]
    assert hotter.segments and {s.temperature for s in hotter.segments} == {0.4}  # 0.0 and 0.2 failed too
    runner.settings.no_speech_threshold = 0.0  # every window sounds silent, and its tokens are improbable
    assert runner.transcribe([job], "plain", record=False)[0].text == ""
    runner.settings.fallback_temperatures = ()
    greedy = runner.transcribe([job], "plain", record=False)[0]
    assert greedy.text and {s.temperature for s in greedy.segments} == {0.0} and greedy.segments[0].avg_logprob < -1
