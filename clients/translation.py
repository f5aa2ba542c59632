"""Translation client: POST /v1/translate and translation.v1.Translation over gRPC."""

from dataclasses import asdict, dataclass

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc

from .grpc_channel import GrpcCaller
from .listing import ModelEntry, models_of
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport


@dataclass(frozen=True)
class TranslateRequest:
    text: str | list[str]
    source_lang: str
    target_lang: str
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | None = None
    num_return_sequences: int | None = None
    max_new_tokens: int | None = None

    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def to_proto(self) -> pb.TranslateRequest:
        fields = self.to_json()
        fields["text"] = self.texts()
        return pb.TranslateRequest(**fields)


@dataclass(frozen=True)
class Translation:
    translations: list[str]  # best hypothesis per input text, in order
    model: str
    alternatives: list[list[str]] | None = None  # every hypothesis, when num_return_sequences > 1

    @property
    def text(self) -> str:
        """The translation of the first (usually only) text."""
        return self.translations[0]

    @classmethod
    def from_json(cls, body: dict) -> "Translation":
        return cls(body["translations"], body["model"], body.get("alternatives"))

    @classmethod
    def from_proto(cls, message: pb.TranslateResponse) -> "Translation":
        alternatives = [list(h.text) for h in message.alternatives] or None
        return cls(list(message.translations), message.model, alternatives)


@dataclass(frozen=True)
class TranslationModel:
    id: str
    source_lang: str
    target_lang: str

    @property
    def pair(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> "TranslationModel":
        return cls(entry.id, entry.extra["source_lang"], entry.extra["target_lang"])


class TranslationClient:
    def __init__(self, transport: RestTransport):
        self.transport = transport

    def translate(
        self, text: str | list[str], *, source_lang: str, target_lang: str, **options
    ) -> Translation:
        request = TranslateRequest(text, source_lang, target_lang, **options)
        return Translation.from_json(
            self.transport.request("POST", "/v1/translate", json=request.to_json()).json()
        )

    def models(self) -> list[TranslationModel]:
        body = self.transport.request("GET", "/v1/models").json()
        return [TranslationModel.from_entry(entry) for entry in models_of(body, "translation")]


class AsyncTranslationClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def translate(
        self, text: str | list[str], *, source_lang: str, target_lang: str, **options
    ) -> Translation:
        request = TranslateRequest(text, source_lang, target_lang, **options)
        response = await self.transport.request("POST", "/v1/translate", json=request.to_json())
        return Translation.from_json(response.json())

    async def models(self) -> list[TranslationModel]:
        body = (await self.transport.request("GET", "/v1/models")).json()
        return [TranslationModel.from_entry(entry) for entry in models_of(body, "translation")]


class TranslationGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.TranslationStub(caller.channel)

    def translate(
        self,
        text: str | list[str],
        *,
        source_lang: str,
        target_lang: str,
        timeout: float | None = None,
        **options,
    ) -> Translation:
        request = TranslateRequest(text, source_lang, target_lang, **options)
        return Translation.from_proto(
            self.caller.unary(self.stub.Translate, request.to_proto(), timeout=timeout)
        )

    def models(self) -> list[TranslationModel]:
        response = self.caller.unary(self.stub.ListModels, pb.ListModelsRequest())
        return [TranslationModel(m.id, m.source_lang, m.target_lang) for m in response.models]


SERVICE_CLIENTS = ServiceClients(
    attribute="translation",
    rest=TranslationClient,
    async_rest=AsyncTranslationClient,
    grpc=TranslationGrpcClient,
)
