"""Speech recognition client: OpenAI's POST /v1/audio/transcriptions and /translations; asr.v1 gRPC.

gRPC also takes audio as a client stream (`transcribe_stream`): pieces of a file, or raw 16-bit PCM
from a microphone, with the transcript returned once the stream closes.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc

from .grpc_channel import GrpcCaller
from .media import Source, read_source
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport
from .retry import NO_RETRY

TASK_PATHS = {"transcribe": "/v1/audio/transcriptions", "translate": "/v1/audio/translations"}
TEXT_FORMATS = ("text", "srt", "vtt")
STREAM_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None = None
    duration: float | None = None  # seconds of audio
    segments: list[Segment] | None = None  # with timestamps=True
    decoding: str | None = None  # the path that served it: "assisted" or "plain"
    task: str | None = None
    model: str | None = None

    @classmethod
    def from_json(cls, body: dict) -> "Transcription":
        segments = body.get("segments")
        return cls(
            body["text"],
            body.get("language"),
            body.get("duration"),
            [Segment(s["id"], s["start"], s["end"], s["text"]) for s in segments]
            if segments is not None
            else None,
            body.get("decoding"),
            body.get("task"),
        )

    def subtitles(self, fmt: str = "srt") -> str:
        """SRT or WebVTT from the segments (ask for timestamps=True), as the REST API formats them."""
        if self.segments is None:
            raise ValueError("no segments: transcribe with timestamps=True")
        decimal = "," if fmt == "srt" else "."
        blocks = [
            f"{_clock(s.start, decimal)} --> {_clock(s.end, decimal)}\n{s.text}\n" for s in self.segments
        ]
        if fmt == "srt":
            return "\n".join(f"{i}\n{block}" for i, block in enumerate(blocks, start=1))
        return "WEBVTT\n\n" + "\n".join(blocks)

    @classmethod
    def from_proto(cls, message: pb.TranscribeResponse) -> "Transcription":
        segments = [Segment(s.id, s.start, s.end, s.text) for s in message.segments]
        return cls(
            message.text,
            message.language or None,
            message.duration,
            segments or None,
            message.decoding or None,
            message.task or None,
            message.model or None,
        )


def _clock(seconds: float, decimal: str) -> str:
    hours, millis = divmod(round(seconds * 1000), 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


@dataclass(frozen=True)
class TranscriptionOptions:
    language: str | None = None  # ISO 639-1 code or name; detected when unset
    prompt: str | None = None
    temperature: float | None = None
    decoding: str | None = None  # extension: auto, assisted or plain
    model: str | None = None

    def form(self, response_format: str) -> dict:
        fields = {k: str(v) for k, v in asdict(self).items() if v is not None}
        return fields | {"response_format": response_format}

    def to_proto(self, task: str, timestamps: bool) -> pb.TranscribeOptions:
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return pb.TranscribeOptions(task=task, timestamps=timestamps, **fields)


def _check_task(task: str) -> str:
    if task not in TASK_PATHS:
        raise ValueError(f"task must be one of {', '.join(TASK_PATHS)}, not {task!r}")
    return task


def _upload(audio: Source, options: TranscriptionOptions, response_format: str) -> dict:
    content, filename = read_source(audio, "audio.wav")
    return {"files": {"file": (filename, content)}, "data": options.form(response_format)}


class ASRClient:
    def __init__(self, transport: RestTransport):
        self.transport = transport

    def transcribe(
        self, audio: Source, *, task: str = "transcribe", timestamps: bool = False, **options
    ) -> Transcription:
        """`task="translate"` gives English text; `timestamps=True` adds segments (verbose_json)."""
        response_format = "verbose_json" if timestamps else "json"
        request = _upload(audio, TranscriptionOptions(**options), response_format)
        return Transcription.from_json(
            self.transport.request("POST", TASK_PATHS[_check_task(task)], **request).json()
        )

    def translate(self, audio: Source, **options) -> Transcription:
        return self.transcribe(audio, task="translate", **options)

    def transcribe_as(
        self, audio: Source, response_format: str, *, task: str = "transcribe", **options
    ) -> str:
        """The server's text formats as they come: "text", "srt" or "vtt" subtitles."""
        if response_format not in TEXT_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(TEXT_FORMATS)}")
        request = _upload(audio, TranscriptionOptions(**options), response_format)
        return self.transport.request("POST", TASK_PATHS[_check_task(task)], **request).text


class AsyncASRClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def transcribe(
        self, audio: Source, *, task: str = "transcribe", timestamps: bool = False, **options
    ) -> Transcription:
        response_format = "verbose_json" if timestamps else "json"
        request = _upload(audio, TranscriptionOptions(**options), response_format)
        response = await self.transport.request("POST", TASK_PATHS[_check_task(task)], **request)
        return Transcription.from_json(response.json())

    async def translate(self, audio: Source, **options) -> Transcription:
        return await self.transcribe(audio, task="translate", **options)

    async def transcribe_as(
        self, audio: Source, response_format: str, *, task: str = "transcribe", **options
    ) -> str:
        if response_format not in TEXT_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(TEXT_FORMATS)}")
        request = _upload(audio, TranscriptionOptions(**options), response_format)
        return (await self.transport.request("POST", TASK_PATHS[_check_task(task)], **request)).text


def file_chunks(data: bytes, chunk_bytes: int = STREAM_CHUNK_BYTES) -> list[bytes]:
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]


class ASRGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.SpeechRecognitionStub(caller.channel)

    def transcribe(
        self,
        audio: Source,
        *,
        task: str = "transcribe",
        timestamps: bool = False,
        timeout: float | None = None,
        **options,
    ) -> Transcription:
        content, filename = read_source(audio, "audio.wav")
        request = pb.TranscribeRequest(
            audio=content,
            filename=filename,
            options=TranscriptionOptions(**options).to_proto(_check_task(task), timestamps),
        )
        return Transcription.from_proto(self.caller.unary(self.stub.Transcribe, request, timeout=timeout))

    def translate(self, audio: Source, **options) -> Transcription:
        return self.transcribe(audio, task="translate", **options)

    def transcribe_stream(
        self,
        chunks: Iterable[bytes],
        *,
        pcm_sample_rate: int = 0,
        filename: str = "",
        task: str = "transcribe",
        timestamps: bool = False,
        on_chunk: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        **options,
    ) -> Transcription:
        """Send audio in pieces: consecutive pieces of one file, or raw s16le mono PCM at `pcm_sample_rate`.

        A sequence of chunks is resent whole if the server asks for a retry; a one-shot iterator
        (a microphone) is sent once.
        """
        config = pb.StreamConfig(
            options=TranscriptionOptions(**options).to_proto(_check_task(task), timestamps),
            pcm_sample_rate=pcm_sample_rate,
            filename=filename,
        )

        def messages() -> Iterator[pb.TranscribeStreamRequest]:
            yield pb.TranscribeStreamRequest(config=config)
            for chunk in chunks:
                yield pb.TranscribeStreamRequest(audio=chunk)
                if on_chunk:
                    on_chunk(chunk)

        retry = None if isinstance(chunks, Sequence) else NO_RETRY
        response = self.caller.stream_unary(
            self.stub.TranscribeStream, messages, timeout=timeout, retry=retry
        )
        return Transcription.from_proto(response)

    def transcribe_file_streamed(
        self, audio: Source, *, chunk_bytes: int = STREAM_CHUNK_BYTES, **options
    ) -> Transcription:
        """A file sent as a stream of chunks (large files; `on_chunk` can drive an upload progress bar)."""
        content, filename = read_source(audio, "audio.wav")
        return self.transcribe_stream(file_chunks(content, chunk_bytes), filename=filename, **options)


SERVICE_CLIENTS = ServiceClients(
    attribute="asr",
    rest=ASRClient,
    async_rest=AsyncASRClient,
    grpc=ASRGrpcClient,
)
