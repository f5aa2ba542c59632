"""OIP speaks tensors: speech's readers and renderers for them (and their tensors) are too many for service.py.

Speech over the Open Inference Protocol (v2): model "tts" (text to speech) and "tts-conversion" (speech to
speech), the service's two operations (bound in service.py) with the REST routes' checks, batchers, budgets and
encoders.

Inputs: "tts" takes "text" (BYTES [1], UTF-8); "tts-conversion" takes "audio" (BYTES [1], an encoded wav, flac,
ogg or mp3 file; in a JSON request its base64 text, as the metadata's `content_type: base64` says). Both take
an optional "speaker_embedding" (FP32, the model's x-vector size) that speaks instead of `voice`. Parameters:
voice (an installed voice or any OpenAI voice name, as on REST), response_format and seed; "tts" also speed.

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

import time
from collections.abc import AsyncIterator

import numpy as np

from services.kit.oip import InferRequest, Outputs, Parameter, Tensor
from services.kit.operations import Call, Upload

from .answers import encoded, sentence_pieces
from .encoding import EncodedAudio, StreamEncoder
from .metrics import TIME_TO_FIRST_AUDIO
from .schemas import EMBEDDING_JSON_ELEMENTS, ConversionPlan, SpeechPlan
from .synthesis import AudioResult

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

SPEECH_INPUTS = [Tensor("text", "BYTES", (1,)), SPEAKER_EMBEDDING]
SPEECH_OUTPUTS = [*AUDIO_OUTPUTS, Tensor("sentence_index", "INT32", (1,)), Tensor("sentence", "BYTES", (1,))]
SPEECH_PARAMETERS = [*COMMON_PARAMETERS, Parameter("speed", float)]


def oip_conversion_inputs(max_bytes: int) -> list[Tensor]:
    # In JSON, base64 text of the file, no larger decoded than the REST upload this service takes.
    return [Tensor("audio", "BYTES", (1,), json_base64=True, max_bytes=max_bytes), SPEAKER_EMBEDDING]


def oip_speech_fields(request: InferRequest, streamed: bool) -> dict:
    # A whole answer has nothing to gain from the streaming plan (first sentence alone, then the rest).
    return {**_fields(request), "input": request.text_input("text")[0], "stream": streamed}


def oip_conversion_fields(request: InferRequest, streamed: bool) -> dict:
    return {**_fields(request), "file": Upload(data=request.bytes_input("audio"))}


async def oip_speech_answer(call: Call[SpeechPlan]) -> Outputs:
    _report(call)
    result, audio = await encoded(call, _requested_format(call))
    TIME_TO_FIRST_AUDIO.labels("oip", "whole").observe(time.perf_counter() - call.received)
    return _audio_outputs(result, audio)


async def oip_speech_stream(call: Call[SpeechPlan], sample_rate: int) -> AsyncIterator[Outputs]:
    """One response per sentence (`sample_rate`: the model's)."""
    _report(call)
    fmt = _requested_format(call)
    encoder = StreamEncoder(fmt, sample_rate) if fmt else None
    async for sentence, piece in sentence_pieces(call, encoder, "oip"):
        outputs: Outputs = {
            "audio": sentence.samples,
            "sample_rate": np.array([sample_rate], dtype=np.int32),
            "sentence_index": np.array([sentence.index], dtype=np.int32),
            "sentence": [sentence.text],
        }
        if encoder is not None:
            outputs["audio_file"] = [piece]
        yield outputs


async def oip_conversion_answer(call: Call[ConversionPlan]) -> Outputs:
    return _audio_outputs(*await encoded(call, _requested_format(call)))


def _fields(request: InferRequest) -> dict:
    """The request's parameters and speaker embedding as fields of the REST schemas (same names)."""
    fields = dict(request.parameters)
    embedding = request.inputs.get(SPEAKER_EMBEDDING.name)
    if embedding is not None:
        fields[SPEAKER_EMBEDDING.name] = embedding.reshape(-1).tolist()
    return fields


def _requested_format(call: Call) -> str | None:
    """Files only for requests that ask for a response_format; samples always."""
    return call.plan.fmt if "response_format" in call.origin.parameters else None


def _report(call: Call[SpeechPlan]) -> None:
    """The voice that spoke and what was not applied, as REST's x-modelserve-voice and -ignored headers say."""
    plan, parameters = call.plan, call.origin.response_parameters
    if plan.voice:
        parameters["voice"] = plan.voice
    if plan.ignored:
        parameters["ignored"] = ", ".join(plan.ignored)


def _audio_outputs(result: AudioResult, audio: EncodedAudio | None) -> Outputs:
    outputs: Outputs = {
        "audio": result.samples,
        "sample_rate": np.array([result.sample_rate], dtype=np.int32),
    }
    if audio is not None:
        outputs["audio_file"] = [audio.data]
    return outputs
