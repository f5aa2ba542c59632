from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeRequest(_message.Message):
    __slots__ = ("input", "voice", "response_format", "speed", "seed", "speaker_embedding", "model")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    input: str
    voice: str
    response_format: str
    speed: float
    seed: int
    speaker_embedding: _containers.RepeatedScalarFieldContainer[float]
    model: str
    def __init__(self, input: _Optional[str] = ..., voice: _Optional[str] = ..., response_format: _Optional[str] = ..., speed: _Optional[float] = ..., seed: _Optional[int] = ..., speaker_embedding: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "media_type", "sample_rate", "duration_seconds")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    media_type: str
    sample_rate: int
    duration_seconds: float
    def __init__(self, audio: _Optional[bytes] = ..., media_type: _Optional[str] = ..., sample_rate: _Optional[int] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("audio", "sentence_index", "text", "duration_seconds", "media_type", "sample_rate")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sentence_index: int
    text: str
    duration_seconds: float
    media_type: str
    sample_rate: int
    def __init__(self, audio: _Optional[bytes] = ..., sentence_index: _Optional[int] = ..., text: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., media_type: _Optional[str] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class ConvertRequest(_message.Message):
    __slots__ = ("audio", "filename", "voice", "speaker_embedding", "response_format", "seed")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    filename: str
    voice: str
    speaker_embedding: _containers.RepeatedScalarFieldContainer[float]
    response_format: str
    seed: int
    def __init__(self, audio: _Optional[bytes] = ..., filename: _Optional[str] = ..., voice: _Optional[str] = ..., speaker_embedding: _Optional[_Iterable[float]] = ..., response_format: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class ConvertResponse(_message.Message):
    __slots__ = ("audio", "media_type", "sample_rate", "duration_seconds")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    media_type: str
    sample_rate: int
    duration_seconds: float
    def __init__(self, audio: _Optional[bytes] = ..., media_type: _Optional[str] = ..., sample_rate: _Optional[int] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "default_voice", "aliases")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VOICES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VOICE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedScalarFieldContainer[str]
    default_voice: str
    aliases: _containers.ScalarMap[str, str]
    def __init__(self, voices: _Optional[_Iterable[str]] = ..., default_voice: _Optional[str] = ..., aliases: _Optional[_Mapping[str, str]] = ...) -> None: ...
