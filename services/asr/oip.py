"""The ASR service as an Open Inference Protocol (v2) model, "asr": an encoded audio file (BYTES "audio"; in a JSON
request its base64 text) or raw samples (FP32 "audio_samples" with the `sample_rate` parameter) in, the transcript
out.

The model is the transcription operation, as REST's routes are (the same checks, audio limits, batcher and cost),
so a transcript over the OIP is the one REST gives for the same audio and options. gRPC
ModelStreamInfer answers a "delta" as each 30 s window is decoded (what REST's `transcript.text.delta` events
carry), then the whole result.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from services.kit.batcher import Done
from services.kit.errors import InvalidArgument
from services.kit.oip import InferRequest, OipModel, Outputs, Parameter, Tensor
from services.kit.operations import Call, Operation, Upload

from .runner import ASRRunner, Partial, Transcript
from .schemas import Samples, TranscriptionPlan, flag_fields, logprobs_body, verbose_json_body
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


def create_oip_model(transcription: Operation, runner: ASRRunner, settings: ASRSettings) -> OipModel:
    inputs = [
        # In JSON, base64 text of the file, no larger decoded than the REST upload this service takes.
        Tensor("audio", "BYTES", (1,), optional=True, json_base64=True, max_bytes=settings.max_body_bytes),
        # The longest audio accepted at the highest rate accepted, and no more FP32 values than a request may
        # carry (4 bytes each, the most compact encoding); the rate actually sent is checked once known.
        Tensor(
            "audio_samples",
            "FP32",
            (-1,),
            optional=True,
            max_elements=min(
                int(settings.max_audio_seconds * settings.max_sample_rate),
                max(settings.max_body_bytes, settings.grpc_max_message_bytes) // 4,
            ),
        ),
    ]

    async def infer(call: Call[TranscriptionPlan]) -> Outputs:
        return outputs(await call.result(), call.job, runner)

    async def by_window(call: Call[TranscriptionPlan]) -> AsyncIterator[Outputs]:
        async for event in call.events():
            if isinstance(event, Partial):
                part: Outputs = {"delta": [event.delta]}
                if event.logprobs is not None:
                    part["logprobs"] = [json.dumps(logprobs_body(event.logprobs))]
                yield part
            elif isinstance(event, Done):
                yield outputs(event.result, call.job, runner)

    return transcription.oip_model(
        MODEL_NAME,
        inputs,
        OUTPUTS,
        to_fields=request_fields,
        parameters=PARAMETERS,
        answer=infer,
        stream=by_window,
    )


def request_fields(request: InferRequest, stream: bool) -> dict[str, Any]:
    """The request's parameters and audio as the operation's fields, its options mapped as gRPC maps them."""
    parameters = request.parameters
    return flag_fields(
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
        **request_audio(request),
    )


def request_audio(request: InferRequest) -> dict[str, Any]:
    """Whichever audio input was sent: the file, or the samples at the `sample_rate` parameter's rate."""
    data = request.bytes_input("audio")
    samples = request.inputs.get("audio_samples")
    rate = request.parameters.get("sample_rate")
    if (data is None) == (samples is None):
        raise InvalidArgument(
            "send exactly one of the inputs 'audio' (an encoded file, BYTES [1]) and 'audio_samples' (FP32 [-1] "
            "mono samples, with the 'sample_rate' parameter)",
            field="audio",
        )
    if data is None:
        return {"samples": Samples(data=samples, rate=rate)}
    if rate is not None:
        raise InvalidArgument(
            "parameter 'sample_rate': applies to 'audio_samples' only; an audio file's header gives its rate",
            field="sample_rate",
        )
    return {"file": Upload(data=data)}


def outputs(transcript: Transcript, plan: TranscriptionPlan, runner: ASRRunner) -> Outputs:
    request = plan.request
    result: Outputs = {
        "text": [transcript.text],
        "language": [transcript.language],
        "duration": np.array([transcript.duration], dtype=np.float32),
        "decoding": [transcript.path],
    }
    if request.response_format == "verbose_json":
        verbose = verbose_json_body(transcript, request.task, request, runner)
        result["segments"] = [json.dumps(verbose.get("segments", []), ensure_ascii=False)]
        if "words" in verbose:
            result["words"] = [json.dumps(verbose["words"], ensure_ascii=False)]
    if transcript.logprobs is not None:
        result["logprobs"] = [json.dumps(logprobs_body(transcript.logprobs), ensure_ascii=False)]
    return result
