"""Text-to-speech client: POST /v1/audio/speech (whole or streamed), voices, voice conversion; tts.v1 gRPC.

Streams yield `AudioChunk`s as the server produces them (sentence by sentence); `save_audio_stream`
writes them to a file while they arrive and leaves a WAV with its real sizes in the header.
"""

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc

from .grpc_channel import GrpcCaller
from .media import Source, finalize_wav, read_source
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport, converted_errors

PCM_BYTES_PER_SAMPLE = 2  # streams carry 16-bit PCM (wav or raw pcm)
WAV_STREAM_HEADER_BYTES = 44


@dataclass(frozen=True)
class SpeechRequest:
    input: str
    voice: str | None = None
    response_format: str | None = None  # mp3, opus, flac, wav, pcm; streams: wav or pcm
    speed: float | None = None
    seed: int | None = None  # same seed, same request: same bytes
    speaker_embedding: list[float] | None = None  # 512 values instead of a named voice
    model: str | None = None

    def to_json(self, stream: bool = False) -> dict:
        body = {key: value for key, value in asdict(self).items() if value is not None}
        # Explicit both ways: the server streams wav and pcm unless told not to.
        return body | {"stream": stream}

    def to_proto(self) -> pb.SynthesizeRequest:
        return pb.SynthesizeRequest(**{k: v for k, v in asdict(self).items() if v is not None})


@dataclass(frozen=True)
class Speech:
    audio: bytes
    media_type: str
    sample_rate: int | None = None
    duration_s: float | None = None

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(self.audio)
        return Path(path)


@dataclass(frozen=True)
class AudioChunk:
    """A piece of a streamed answer; gRPC chunks are whole sentences and say which one."""

    audio: bytes
    media_type: str
    sample_rate: int
    duration_s: float  # of audio in this chunk
    sentence_index: int | None = None
    text: str | None = None


@dataclass(frozen=True)
class Voices:
    names: list[str]
    default: str | None


def _voices(data: list[dict]) -> Voices:
    """The installed voices (aliases such as OpenAI's voice names are listed with `alias_of`)."""
    installed = [v for v in data if "alias_of" not in v]
    return Voices([v["id"] for v in installed], next((v["id"] for v in installed if v.get("default")), None))


def _speech_from_response(response) -> Speech:
    headers = response.headers
    rate, duration = headers.get("x-sample-rate"), headers.get("x-audio-duration")
    return Speech(
        response.content,
        headers.get("content-type", "application/octet-stream"),
        int(rate) if rate else None,
        float(duration) if duration else None,
    )


class _PcmClock:
    """Seconds of audio in byte pieces of a 16-bit PCM stream (a WAV stream starts with a header)."""

    def __init__(self, response):
        self.media_type = response.headers.get("content-type", "audio/wav")
        self.sample_rate = int(response.headers.get("x-sample-rate", 16000))
        self.header_left = WAV_STREAM_HEADER_BYTES if "wav" in self.media_type else 0

    def chunk(self, piece: bytes) -> AudioChunk:
        skipped = min(self.header_left, len(piece))
        self.header_left -= skipped
        seconds = (len(piece) - skipped) / (PCM_BYTES_PER_SAMPLE * self.sample_rate)
        return AudioChunk(piece, self.media_type, self.sample_rate, seconds)


def _speech_from_proto(message: pb.SynthesizeResponse | pb.ConvertResponse) -> Speech:
    return Speech(message.audio, message.media_type, message.sample_rate, message.duration_seconds)


def _chunk_from_proto(message: pb.AudioChunk) -> AudioChunk:
    return AudioChunk(
        message.audio,
        message.media_type,
        message.sample_rate,
        message.duration_seconds,
        message.sentence_index,
        message.text,
    )


def save_audio_stream(
    chunks: Iterable[AudioChunk], path: str | Path, on_chunk: Callable[[AudioChunk], None] | None = None
) -> Speech:
    """Write chunks as they arrive (a player may open the file early); fix WAV sizes at the end."""
    path = Path(path)
    media_type, sample_rate, duration = "application/octet-stream", 0, 0.0
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk.audio)
            media_type, sample_rate, duration = (
                chunk.media_type,
                chunk.sample_rate,
                duration + chunk.duration_s,
            )
            if on_chunk:
                on_chunk(chunk)
    audio = finalize_wav(path.read_bytes())
    path.write_bytes(audio)
    return Speech(audio, media_type, sample_rate, duration)


@dataclass(frozen=True)
class ConversionRequest:
    """The options of a voice conversion (the audio travels beside them)."""

    voice: str | None = None
    speaker_embedding: list[float] | None = None  # 512 values instead of a named voice
    response_format: str = "wav"
    seed: int | None = None

    def to_form(self) -> dict[str, str]:
        form = {"voice": self.voice, "response_format": self.response_format, "seed": self.seed}
        if self.speaker_embedding is not None:
            form["speaker_embedding"] = json.dumps(list(self.speaker_embedding))
        return {k: str(v) for k, v in form.items() if v is not None}

    def to_proto(self, audio: bytes, filename: str) -> pb.ConvertRequest:
        return pb.ConvertRequest(
            audio=audio,
            filename=filename,
            voice=self.voice or "",
            speaker_embedding=self.speaker_embedding or [],
            response_format=self.response_format,
            **({"seed": self.seed} if self.seed is not None else {}),
        )


def _conversion_upload(audio: Source, options: dict) -> dict:
    """The multipart request of POST /v1/audio/conversions."""
    form = ConversionRequest(**options).to_form()
    content, filename = read_source(audio, "speech.wav")
    return {"files": {"file": (filename, content)}, "data": form}


class TTSClient:
    def __init__(self, transport: RestTransport):
        self.transport = transport

    def speech(self, text: str, **options) -> Speech:
        """The whole audio file (`response_format` default: the server's, mp3 like OpenAI's)."""
        body = SpeechRequest(text, **options).to_json()
        return _speech_from_response(self.transport.request("POST", "/v1/audio/speech", json=body))

    def stream_speech(self, text: str, **options) -> Iterator[AudioChunk]:
        """Audio as it is produced (wav or pcm); the first chunk arrives after the first sentence."""
        body = SpeechRequest(text, **options).to_json(stream=True)
        with self.transport.stream("POST", "/v1/audio/speech", json=body) as response:
            clock = _PcmClock(response)
            with converted_errors(self.transport.base_url):
                for piece in response.iter_bytes():
                    yield clock.chunk(piece)

    def voices(self) -> Voices:
        data = self.transport.request("GET", "/v1/voices").json()["data"]
        return _voices(data)

    def convert(self, audio: Source, **options) -> Speech:
        """The same speech in another voice (options: `ConversionRequest`'s fields)."""
        upload = _conversion_upload(audio, options)
        return _speech_from_response(self.transport.request("POST", "/v1/audio/conversions", **upload))


class AsyncTTSClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def speech(self, text: str, **options) -> Speech:
        body = SpeechRequest(text, **options).to_json()
        return _speech_from_response(await self.transport.request("POST", "/v1/audio/speech", json=body))

    async def stream_speech(self, text: str, **options) -> AsyncIterator[AudioChunk]:
        body = SpeechRequest(text, **options).to_json(stream=True)
        async with self.transport.stream("POST", "/v1/audio/speech", json=body) as response:
            clock = _PcmClock(response)
            with converted_errors(self.transport.base_url):
                async for piece in response.aiter_bytes():
                    yield clock.chunk(piece)

    async def voices(self) -> Voices:
        data = (await self.transport.request("GET", "/v1/voices")).json()["data"]
        return _voices(data)

    async def convert(self, audio: Source, **options) -> Speech:
        upload = _conversion_upload(audio, options)
        return _speech_from_response(await self.transport.request("POST", "/v1/audio/conversions", **upload))


class TTSGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.TextToSpeechStub(caller.channel)

    def speech(self, text: str, *, timeout: float | None = None, **options) -> Speech:
        request = SpeechRequest(text, **options).to_proto()
        response = self.caller.unary(self.stub.Synthesize, request, timeout=timeout)
        return _speech_from_proto(response)

    def stream_speech(self, text: str, *, timeout: float | None = None, **options) -> Iterator[AudioChunk]:
        request = SpeechRequest(text, **options).to_proto()
        for message in self.caller.unary_stream(self.stub.SynthesizeStream, request, timeout=timeout):
            yield _chunk_from_proto(message)

    def voices(self) -> Voices:
        response = self.caller.unary(self.stub.ListVoices, pb.ListVoicesRequest())
        return Voices(list(response.voices), response.default_voice or None)

    def convert(self, audio: Source, *, timeout: float | None = None, **options) -> Speech:
        conversion = ConversionRequest(**options)
        request = conversion.to_proto(*read_source(audio, "speech.wav"))
        response = self.caller.unary(self.stub.Convert, request, timeout=timeout)
        return _speech_from_proto(response)


SERVICE_CLIENTS = ServiceClients(
    attribute="tts",
    rest=TTSClient,
    async_rest=AsyncTTSClient,
    grpc=TTSGrpcClient,
)
