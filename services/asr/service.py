"""The ASR service for the kit: transcription (and translation, its other task), one operation bound to REST
(OpenAI's audio routes), gRPC (asr.v1.SpeechRecognition) and the Open Inference Protocol model "asr".

Over the OIP an encoded audio file (BYTES "audio"; in a JSON request its base64 text) or raw samples (FP32
"audio_samples" with the `sample_rate` parameter) go in and the transcript comes out, the one REST gives for the
same audio and options; gRPC ModelStreamInfer answers a "delta" as each 30 s window is decoded (what REST's
`transcript.text.delta` events carry), then the whole result.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.kit.batcher import Done
from services.kit.errors import InvalidArgument
from services.kit.oip import InferRequest, Outputs, Parameter, Tensor
from services.kit.operations import Call, Operation, Upload
from services.kit.service import GrpcServicer, Service

from .continuous import ContinuousDecoding
from .domain import Partial, Transcript
from .grpc_servicer import grpc_file_fields, grpc_response, grpc_stream_fields, grpc_updates
from .rest import read_transcription, rest_answer, rest_openapi
from .runner import ASRRunner
from .schemas import (
    Samples,
    Transcription,
    TranscriptionPlan,
    checked_task,
    logprobs_body,
    plan_transcription,
    segments_body,
    timestamps_of,
    words_body,
)
from .settings import ASRSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name
ROUTES = {
    "transcribe": (
        "/v1/audio/transcriptions",
        "transcriptions",
        "multipart/form-data: `file` and OpenAI's transcription fields. `model` may be the served model's id, "
        "whisper-1, gpt-4o-transcribe or gpt-4o-mini-transcribe.",
    ),
    "translate": (
        "/v1/audio/translations",
        "translations",
        "multipart/form-data: `file` and OpenAI's translation fields (English text from any spoken language).",
    ),
}
OIP_PARAMETERS = [
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
OIP_OUTPUTS = [
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


def create_service(settings: ASRSettings | None = None) -> Service:
    settings = settings or ASRSettings()
    runner = ASRRunner(settings)
    service = Service(name="asr", settings=settings, runner=runner)
    service.models = lambda: [
        {
            "id": runner.model_id,
            "task": "automatic-speech-recognition",
            "assistant": settings.assistant_model or None,
            "quantization": runner.quantization,
            "encoder_dtype": runner.encoder_dtype,
            "head_dtype": runner.head_dtype,
        }
    ]
    transcription: Operation[Transcription, TranscriptionPlan, None] = Operation(
        "transcribe",
        Transcription,
        None,
        service.batcher("transcribe", runner.predict_batch, decoder=ContinuousDecoding(runner)),
        prepare=lambda request: plan_transcription(request, runner, settings),
    )

    service.router = APIRouter(tags=["asr"])
    for task, (path, name, description) in ROUTES.items():
        transcription.add_route(
            service.router,
            path,
            answer=lambda call: rest_answer(call, runner),
            read=lambda request, task=task: read_transcription(request, task),
            name=name,
            description=description,
            openapi_extra=rest_openapi(task),
        )

    async def transcribe(call: Call[TranscriptionPlan]) -> pb.TranscribeResponse:
        return grpc_response(await call.result(), call.plan.request.task, runner.model_id)

    servicer = pb_grpc.SpeechRecognitionServicer()
    servicer.Transcribe = transcription.grpc_method(
        answer=transcribe, to_fields=lambda message: grpc_file_fields(message, stream=False)
    )
    servicer.TranscribeUpdates = transcription.grpc_stream(
        lambda call: grpc_updates(call, runner.model_id),
        to_fields=lambda message: grpc_file_fields(message, stream=True),
    )
    servicer.TranscribeStream = transcription.grpc_method(
        answer=transcribe, to_fields=lambda messages: grpc_stream_fields(messages, settings)
    )
    service.grpc.append(GrpcServicer(pb_grpc.add_SpeechRecognitionServicer_to_server, servicer, SERVICE_NAME))

    async def infer(call: Call[TranscriptionPlan]) -> Outputs:
        return oip_outputs(await call.result(), call.plan)

    async def by_window(call: Call[TranscriptionPlan]) -> AsyncIterator[Outputs]:
        async for event in call.events():
            if isinstance(event, Partial):
                part: Outputs = {"delta": [event.delta]}
                if event.logprobs is not None:
                    part["logprobs"] = [json.dumps(logprobs_body(event.logprobs))]
                yield part
            elif isinstance(event, Done):
                yield oip_outputs(event.result, call.plan)

    service.oip.append(
        transcription.oip_model(
            "asr",
            oip_inputs(settings),
            OIP_OUTPUTS,
            to_fields=oip_fields,
            parameters=OIP_PARAMETERS,
            answer=infer,
            stream=by_window,
        )
    )
    return service


def oip_inputs(settings: ASRSettings) -> list[Tensor]:
    return [
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


def oip_fields(request: InferRequest, stream: bool) -> dict[str, Any]:
    """The request's parameters and audio as the transcription's fields."""
    parameters, audio = request.parameters, oip_audio(request)
    return {
        "task": checked_task(parameters.get("task", "transcribe")),
        "timestamps": timestamps_of(
            parameters.get("timestamps", False), parameters.get("word_timestamps", False)
        ),
        "logprobs": parameters.get("logprobs", False),
        "language": parameters.get("language"),
        "prompt": parameters.get("prompt"),
        "temperature": parameters.get("temperature", 0.0),
        "decoding": parameters.get("decoding", "auto"),
        "chunking_strategy": parameters.get("chunking_strategy"),
        "stream": stream,
        **audio,
    }


def oip_audio(request: InferRequest) -> dict[str, Any]:
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


def oip_outputs(transcript: Transcript, plan: TranscriptionPlan) -> Outputs:
    outputs: Outputs = {
        "text": [transcript.text],
        "language": [transcript.language],
        "duration": np.array([transcript.duration], dtype=np.float32),
        "decoding": [transcript.path],
    }
    if plan.request.timestamps != "none":
        outputs["segments"] = [json.dumps(segments_body(transcript), ensure_ascii=False)]
    if transcript.words is not None:
        outputs["words"] = [json.dumps(words_body(transcript), ensure_ascii=False)]
    if transcript.logprobs is not None:
        outputs["logprobs"] = [json.dumps(logprobs_body(transcript.logprobs), ensure_ascii=False)]
    return outputs
