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

    def __init__(self, media_type: str, sample_rate: int):
        self.sample_rate = sample_rate
        self.header_left = WAV_STREAM_HEADER_BYTES if "wav" in media_type else 0

    def seconds(self, piece: bytes) -> float:
        skipped = min(self.header_left, len(piece))
        self.header_left -= skipped
        return (len(piece) - skipped) / (PCM_BYTES_PER_SAMPLE * self.sample_rate)


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


def _conversion_form(voice, speaker_embedding, response_format, seed) -> dict:
    form = {"voice": voice, "response_format": response_format, "seed": seed}
    if speaker_embedding is not None:
        form["speaker_embedding"] = json.dumps(list(speaker_embedding))
    return {k: str(v) for k, v in form.items() if v is not None}


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
            media_type = response.headers.get("content-type", "audio/wav")
            clock = _PcmClock(media_type, int(response.headers.get("x-sample-rate", 16000)))
            with converted_errors(self.transport.base_url):
                for piece in response.iter_bytes():
                    yield AudioChunk(piece, media_type, clock.sample_rate, clock.seconds(piece))

    def voices(self) -> Voices:
        data = self.transport.request("GET", "/v1/voices").json()["data"]
        return _voices(data)

    def convert(
        self,
        audio: Source,
        *,
        voice: str | None = None,
        speaker_embedding: list[float] | None = None,
        response_format: str = "wav",
        seed: int | None = None,
    ) -> Speech:
        """The same speech in another voice."""
        content, filename = read_source(audio, "speech.wav")
        response = self.transport.request(
            "POST",
            "/v1/audio/conversions",
            files={"file": (filename, content)},
            data=_conversion_form(voice, speaker_embedding, response_format, seed),
        )
        return _speech_from_response(response)


class AsyncTTSClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def speech(self, text: str, **options) -> Speech:
        body = SpeechRequest(text, **options).to_json()
        return _speech_from_response(await self.transport.request("POST", "/v1/audio/speech", json=body))

    async def stream_speech(self, text: str, **options) -> AsyncIterator[AudioChunk]:
        body = SpeechRequest(text, **options).to_json(stream=True)
        async with self.transport.stream("POST", "/v1/audio/speech", json=body) as response:
            media_type = response.headers.get("content-type", "audio/wav")
            clock = _PcmClock(media_type, int(response.headers.get("x-sample-rate", 16000)))
            with converted_errors(self.transport.base_url):
                async for piece in response.aiter_bytes():
                    yield AudioChunk(piece, media_type, clock.sample_rate, clock.seconds(piece))

    async def voices(self) -> Voices:
        data = (await self.transport.request("GET", "/v1/voices")).json()["data"]
        return _voices(data)

    async def convert(
        self,
        audio: Source,
        *,
        voice: str | None = None,
        speaker_embedding: list[float] | None = None,
        response_format: str = "wav",
        seed: int | None = None,
    ) -> Speech:
        content, filename = read_source(audio, "speech.wav")
        response = await self.transport.request(
            "POST",
            "/v1/audio/conversions",
            files={"file": (filename, content)},
            data=_conversion_form(voice, speaker_embedding, response_format, seed),
        )
        return _speech_from_response(response)


class TTSGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.TextToSpeechStub(caller.channel)

    def speech(self, text: str, *, timeout: float | None = None, **options) -> Speech:
        request = SpeechRequest(text, **options).to_proto()
        response = self.caller.unary(self.stub.Synthesize, request, timeout=timeout)
        return Speech(response.audio, response.media_type, response.sample_rate, response.duration_seconds)

    def stream_speech(self, text: str, *, timeout: float | None = None, **options) -> Iterator[AudioChunk]:
        request = SpeechRequest(text, **options).to_proto()
        for message in self.caller.unary_stream(self.stub.SynthesizeStream, request, timeout=timeout):
            yield _chunk_from_proto(message)

    def voices(self) -> Voices:
        response = self.caller.unary(self.stub.ListVoices, pb.ListVoicesRequest())
        return Voices(list(response.voices), response.default_voice or None)

    def convert(
        self,
        audio: Source,
        *,
        voice: str | None = None,
        speaker_embedding: list[float] | None = None,
        response_format: str = "wav",
        seed: int | None = None,
        timeout: float | None = None,
    ) -> Speech:
        content, filename = read_source(audio, "speech.wav")
        request = pb.ConvertRequest(
            audio=content,
            filename=filename,
            voice=voice or "",
            speaker_embedding=speaker_embedding or [],
            response_format=response_format,
            **({"seed": seed} if seed is not None else {}),
        )
        response = self.caller.unary(self.stub.Convert, request, timeout=timeout)
        return Speech(response.audio, response.media_type, response.sample_rate, response.duration_seconds)


SERVICE_CLIENTS = ServiceClients(
    attribute="tts",
    rest=TTSClient,
    async_rest=AsyncTTSClient,
    grpc=TTSGrpcClient,
)
