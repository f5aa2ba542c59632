"""Speech over the Open Inference Protocol (v2): model "tts" (text to speech) and "tts-conversion" (speech to
speech), through the REST routes' schema builders, batchers, budgets and encoders.

Inputs: "tts" takes "text" (BYTES [1], UTF-8); "tts-conversion" takes "audio" (BYTES [1], an encoded wav, flac,
ogg or mp3 file). Both take an optional "speaker_embedding" (FP32, the model's x-vector size) that speaks instead
of `voice`. Parameters: voice (an installed voice or any OpenAI voice name, as on REST), response_format and
seed; "tts" also speed.

Outputs, for both models:
- "audio": FP32 [-1], mono samples in [-1, 1] at the model's rate, whatever response_format says;
- "sample_rate": INT32 [1], the rate of "audio";
- "audio_file": BYTES [1], only when the request sets response_format: the file REST answers for that format
  (pcm is OpenAI's raw 24 kHz 16-bit little-endian; the other formats carry their rate in their header).
"tts" reports the installed voice that spoke (what an alias selected) in the response parameter "voice", and
parameters accepted but not applied in "ignored", as REST's x-modelserve-voice and x-modelserve-ignored headers.

ModelStreamInfer on "tts" answers one response per sentence as soon as it is made, as REST's streaming route
does (the first sentence alone, then the rest together): "audio" holds the sentence's samples (the pause before
it included), "sentence_index" and "sentence" say which; with response_format (wav or pcm only, as REST streams)
"audio_file" holds the stream's next piece, and the pieces together are REST's streamed bytes.
"""

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from services.kit.batcher import Done, DynamicBatcher
from services.kit.oip import InferRequest, OipModel, Outputs, Parameter, Tensor
from services.kit.validation import parse

from .encoding import StreamEncoder, encode
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import AudioResult, SentenceAudio, SpeechRunner
from .schemas import (
    EMBEDDING_JSON_ELEMENTS,
    ConversionRequest,
    SpeechPlan,
    SpeechRequest,
    build_conversion_job,
    build_speech_job,
)
from .settings import TTSSettings

SPEECH_MODEL = "tts"
CONVERSION_MODEL = "tts-conversion"

SPEAKER_EMBEDDING = Tensor(
    "speaker_embedding", "FP32", (-1,), max_elements=EMBEDDING_JSON_ELEMENTS, optional=True
)
AUDIO_OUTPUTS = [
    Tensor("audio", "FP32", (-1,)),
    Tensor("sample_rate", "INT32", (1,)),
    Tensor("audio_file", "BYTES", (1,)),
]
COMMON_PARAMETERS = [Parameter("voice", str), Parameter("response_format", str), Parameter("seed", int)]


def oip_models(
    runner: SpeechRunner, speech: DynamicBatcher, conversion: DynamicBatcher, settings: TTSSettings
) -> list[OipModel]:
    def speech_plan(request: InferRequest, stream: bool) -> SpeechPlan:
        (text,) = request.text_input("text")
        body = parse(SpeechRequest, {**_fields(request), "input": text, "stream": stream})
        plan = build_speech_job(body, runner, settings)
        if plan.voice:
            request.response_parameters["voice"] = plan.voice
        if plan.ignored:
            request.response_parameters["ignored"] = ", ".join(plan.ignored)
        return plan

    async def speak(request: InferRequest) -> Outputs:
        received = time.perf_counter()
        # A whole answer has nothing to gain from the streaming plan (first sentence alone, then the rest).
        plan = speech_plan(request, stream=False)
        job = plan.job
        result = await speech.submit(
            job,
            key=job.batch_key,
            timeout=request.timeout,
            disconnected=request.disconnected,
            cost=runner.cost(job),
        )
        outputs = await _audio_outputs(result, plan.fmt if "response_format" in request.parameters else None)
        TIME_TO_FIRST_AUDIO.labels("oip", "whole").observe(time.perf_counter() - received)
        return outputs

    async def speak_by_sentence(request: InferRequest) -> AsyncIterator[Outputs]:
        received = time.perf_counter()
        plan = speech_plan(request, stream=True)
        job = plan.job
        encoder = (
            StreamEncoder(plan.fmt, runner.sample_rate) if "response_format" in request.parameters else None
        )
        events = speech.stream(
            job,
            key=job.batch_key,
            timeout=request.timeout,
            disconnected=request.disconnected,
            cost=runner.cost(job),
        )
        try:
            async for event in events:
                if isinstance(event, Done):
                    return
                if not isinstance(event, SentenceAudio):
                    continue
                if event.index == 0:
                    TIME_TO_FIRST_AUDIO.labels("oip", "stream").observe(time.perf_counter() - received)
                outputs: Outputs = {
                    "audio": event.samples,
                    "sample_rate": np.array([runner.sample_rate], dtype=np.int32),
                    "sentence_index": np.array([event.index], dtype=np.int32),
                    "sentence": [event.text],
                }
                if encoder is not None:
                    outputs["audio_file"] = [
                        encoder.piece(event.samples, last=event.index == len(job.sentences) - 1)
                    ]
                yield outputs
        finally:
            await events.aclose()

    async def convert(request: InferRequest) -> Outputs:
        options = parse(ConversionRequest, _fields(request))
        job, fmt = await asyncio.to_thread(
            build_conversion_job, options, request.bytes_input("audio"), None, runner, settings
        )
        result = await conversion.submit(
            job,
            key=job.batch_key,
            timeout=request.timeout,
            disconnected=request.disconnected,
            cost=runner.cost(job),
            nbytes=job.samples.nbytes,
        )
        return await _audio_outputs(result, fmt if "response_format" in request.parameters else None)

    return [
        OipModel(
            SPEECH_MODEL,
            inputs=[Tensor("text", "BYTES", (1,)), SPEAKER_EMBEDDING],
            outputs=[
                *AUDIO_OUTPUTS,
                Tensor("sentence_index", "INT32", (1,)),
                Tensor("sentence", "BYTES", (1,)),
            ],
            infer=speak,
            parameters=[*COMMON_PARAMETERS, Parameter("speed", float)],
            stream=speak_by_sentence,
        ),
        OipModel(
            CONVERSION_MODEL,
            inputs=[Tensor("audio", "BYTES", (1,)), SPEAKER_EMBEDDING],
            outputs=AUDIO_OUTPUTS,
            infer=convert,
            parameters=COMMON_PARAMETERS,
        ),
    ]


def _fields(request: InferRequest) -> dict:
    """The request's parameters and speaker embedding as fields of the REST schemas (same names)."""
    fields = dict(request.parameters)
    embedding = request.inputs.get(SPEAKER_EMBEDDING.name)
    if embedding is not None:
        fields[SPEAKER_EMBEDDING.name] = embedding.reshape(-1).tolist()
    return fields


async def _audio_outputs(result: AudioResult, fmt: str | None) -> Outputs:
    outputs: Outputs = {
        "audio": result.samples,
        "sample_rate": np.array([result.sample_rate], dtype=np.int32),
    }
    if fmt is not None:
        audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, fmt)
        outputs["audio_file"] = [audio.data]
    return outputs
