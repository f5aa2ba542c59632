"""The ASR service as an Open Inference Protocol (v2) model, "asr": an encoded audio file (BYTES "audio") or raw
samples (FP32 "audio_samples" with the `sample_rate` parameter) in, the transcript out.

Requests go through the REST route's checks (`check_request`, the same audio limits) and the same batcher, with
the same cost, so a transcript over the OIP is the one REST gives for the same audio and options. gRPC
ModelStreamInfer answers a "delta" as each 30 s window is decoded (what REST's `transcript.text.delta` events
carry), then the whole result.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from services.kit.audio import check_sample_rate, decode_audio, resample
from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import InvalidArgument, PayloadTooLarge
from services.kit.oip import InferRequest, OipModel, Outputs, Parameter, Tensor

from .runner import SAMPLE_RATE, ASRJob, ASRRunner, Partial, Transcript
from .schemas import (
    TranscriptionRequest,
    build_job,
    check_request,
    logprobs_body,
    options_request,
    verbose_json_body,
)
from .settings import ASRSettings

MODEL_NAME = "asr"

PARAMETERS = [
    Parameter("task", str),  # transcribe (default) or translate (English text from any spoken language)
    Parameter("language", str),
    Parameter("prompt", str),
    Parameter("temperature", float),
    Parameter("decoding", str),  # auto, assisted or plain
    Parameter("timestamps", bool),  # the "segments" output
    Parameter("word_timestamps", bool),  # the "words" output (segments too)
    Parameter("logprobs", bool),  # the "logprobs" output
    Parameter("chunking_strategy", str),  # "auto" or a server_vad object as JSON text
    Parameter("sample_rate", int),  # of "audio_samples"; required with them, refused with "audio"
]

OUTPUTS = [
    Tensor("text", "BYTES", (1,)),
    Tensor("language", "BYTES", (1,)),  # the spoken language's Whisper code, given or detected
    Tensor("duration", "FP32", (1,)),
    Tensor("decoding", "BYTES", (1,)),  # the path that decoded it: assisted, plain or chunked
    # JSON lists shaped as REST's verbose_json segments and words, and json's logprobs.
    Tensor("segments", "BYTES", (1,)),
    Tensor("words", "BYTES", (1,)),
    Tensor("logprobs", "BYTES", (1,)),
    # ModelStreamInfer only: the text one decoded window added, before the final response.
    Tensor("delta", "BYTES", (1,)),
]


def create_oip_model(runner: ASRRunner, batcher: DynamicBatcher, settings: ASRSettings) -> OipModel:
    inputs = [
        Tensor("audio", "BYTES", (1,), optional=True),
        # The longest audio accepted at the highest rate accepted; the rate actually sent is checked once known.
        Tensor(
            "audio_samples",
            "FP32",
            (-1,),
            optional=True,
            max_elements=int(settings.max_audio_seconds * settings.max_sample_rate),
        ),
    ]

    async def prepare(request: InferRequest, stream: bool) -> tuple[str, TranscriptionRequest, ASRJob]:
        task, body = request_options(request.parameters, stream)
        options, language = check_request(body, task, runner, settings)
        audio = await asyncio.to_thread(request_audio, request, settings)
        return task, body, build_job(body, options, language, audio)

    async def infer(request: InferRequest) -> Outputs:
        task, body, job = await prepare(request, stream=False)
        transcript = await batcher.submit(
            job,
            key=job.batch_key,
            timeout=request.timeout,
            disconnected=request.disconnected,
            cost=runner.cost(job),
            nbytes=job.nbytes,
        )
        return outputs(transcript, task, body, runner)

    async def stream(request: InferRequest) -> AsyncIterator[Outputs]:
        task, body, job = await prepare(request, stream=True)
        async for event in batcher.stream(
            job,
            key=job.batch_key,
            timeout=request.timeout,
            disconnected=request.disconnected,
            cost=runner.cost(job),
            nbytes=job.nbytes,
        ):
            if isinstance(event, Partial):
                part: Outputs = {"delta": [event.delta]}
                if event.logprobs is not None:
                    part["logprobs"] = [json.dumps(logprobs_body(event.logprobs))]
                yield part
            elif isinstance(event, Done):
                yield outputs(event.result, task, body, runner)

    return OipModel(MODEL_NAME, inputs, OUTPUTS, infer, parameters=PARAMETERS, stream=stream)


def request_options(parameters: dict[str, Any], stream: bool) -> tuple[str, TranscriptionRequest]:
    """The request parameters as the REST route's request model, mapped as gRPC Transcribe maps its options."""
    return options_request(
        parameters.get("task", "transcribe"),
        timestamps=parameters.get("timestamps", False),
        word_timestamps=parameters.get("word_timestamps", False),
        logprobs=parameters.get("logprobs", False),
        language=parameters.get("language"),
        prompt=parameters.get("prompt"),
        temperature=parameters.get("temperature", 0.0),
        decoding=parameters.get("decoding", "auto"),
        chunking_strategy=parameters.get("chunking_strategy"),
        stream=stream,
    )


def request_audio(request: InferRequest, settings: ASRSettings) -> np.ndarray:
    """Mono float32 samples at 16 kHz from whichever audio input was sent, under REST's limits."""
    data = request.bytes_input("audio")
    samples = request.inputs.get("audio_samples")
    rate = request.parameters.get("sample_rate")
    if (data is None) == (samples is None):
        raise InvalidArgument(
            "send exactly one of the inputs 'audio' (an encoded file, BYTES [1]) and 'audio_samples' (FP32 [-1] "
            "mono samples, with the 'sample_rate' parameter)",
            field="audio",
        )
    if data is not None:
        if rate is not None:
            raise InvalidArgument(
                "parameter 'sample_rate': applies to 'audio_samples' only; an audio file's header gives its rate",
                field="sample_rate",
            )
        return decode_audio(
            data,
            max_seconds=settings.max_audio_seconds,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
            max_channels=settings.max_channels,
        )
    return samples_audio(samples, rate, settings)


def samples_audio(samples: np.ndarray, rate: int | None, settings: ASRSettings) -> np.ndarray:
    if rate is None:
        raise InvalidArgument("parameter 'sample_rate': required with 'audio_samples'", field="sample_rate")
    check_sample_rate(
        rate, settings.min_sample_rate, settings.max_sample_rate, "audio_samples", field="sample_rate"
    )
    if samples.size == 0:
        raise InvalidArgument("input 'audio_samples' is empty", field="audio_samples")
    if samples.size > settings.max_audio_seconds * rate:
        raise PayloadTooLarge(
            f"input 'audio_samples' is {samples.size / rate:.1f} s long at {rate} Hz; the limit is "
            f"{settings.max_audio_seconds:g} s",
            field="audio_samples",
        )
    if not np.isfinite(samples).all():
        raise InvalidArgument("input 'audio_samples' contains NaN or infinite samples", field="audio_samples")
    mono = resample(samples.astype(np.float32, copy=False), rate, SAMPLE_RATE)
    # The resampling filter may ring past full scale, as audio files' samples may exceed it.
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def outputs(transcript: Transcript, task: str, body: TranscriptionRequest, runner: ASRRunner) -> Outputs:
    result: Outputs = {
        "text": [transcript.text],
        "language": [transcript.language],
        "duration": np.array([transcript.duration], dtype=np.float32),
        "decoding": [transcript.path],
    }
    if body.response_format == "verbose_json":
        verbose = verbose_json_body(transcript, task, body, runner)
        result["segments"] = [json.dumps(verbose.get("segments", []), ensure_ascii=False)]
        if "words" in verbose:
            result["words"] = [json.dumps(verbose["words"], ensure_ascii=False)]
    if transcript.logprobs is not None:
        result["logprobs"] = [json.dumps(logprobs_body(transcript.logprobs), ensure_ascii=False)]
    return result
