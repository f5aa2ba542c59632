"""Request/response schemas shared by REST and gRPC, and the checks against configured limits."""

from pydantic import BaseModel, ConfigDict, Field

from services.kit.errors import InvalidArgument

from .runner import GenerationOptions, TranslationJob, TranslationRunner
from .settings import TranslationSettings


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | list[str] = Field(description="one text or a list of texts")
    source_lang: str = Field(min_length=2, max_length=8, examples=["en"])
    target_lang: str = Field(min_length=2, max_length=8, examples=["de"])
    num_beams: int | None = Field(None, ge=1)
    length_penalty: float | None = Field(
        None, ge=-10, le=10, allow_inf_nan=False, description="exponent of the length in beam scores"
    )
    early_stopping: bool | None = None
    num_return_sequences: int = Field(1, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)

    @property
    def pair(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"

    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


class TranslateResponse(BaseModel):
    translations: list[str]
    alternatives: list[list[str]] | None = None
    model: str


def build_job(request: TranslateRequest, settings: TranslationSettings, runner: TranslationRunner) -> TranslationJob:
    """Check a request against the service limits; every refusal names the field. Tokenizes the texts (after the
    cheap checks bound their characters): run it off the event loop."""
    texts = request.texts()
    if not texts:
        raise InvalidArgument("text: give at least one text", field="text")
    if len(texts) > settings.max_texts:
        raise InvalidArgument(f"text: at most {settings.max_texts} texts per request, got {len(texts)}", field="text")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"text[{i}]: must not be empty", field="text")
        if len(text) > settings.max_text_chars:
            raise InvalidArgument(
                f"text[{i}]: {len(text)} characters exceeds the limit of {settings.max_text_chars}", field="text"
            )
    if request.num_beams is not None and request.num_beams > settings.max_num_beams:
        raise InvalidArgument(
            f"num_beams: {request.num_beams} exceeds the limit of {settings.max_num_beams}", field="num_beams"
        )
    if request.num_return_sequences > (request.num_beams or 1):
        raise InvalidArgument(
            f"num_return_sequences: {request.num_return_sequences} needs num_beams of at least as many "
            f"(got {request.num_beams})",
            field="num_return_sequences",
        )
    if request.max_new_tokens is not None and request.max_new_tokens > settings.max_new_tokens:
        raise InvalidArgument(
            f"max_new_tokens: {request.max_new_tokens} exceeds the limit of {settings.max_new_tokens}",
            field="max_new_tokens",
        )
    source_ids = runner.source_ids(request.pair, texts)
    source_tokens = [len(ids) for ids in source_ids]
    limit = runner.max_source_tokens(request.pair)
    for i, count in enumerate(source_tokens):
        if count > limit:
            raise InvalidArgument(
                f"text[{i}]: {count} source tokens exceeds the model's limit of {limit} "
                "(max_position_embeddings); split the text",
                field="text",
            )
    options = GenerationOptions(
        num_beams=request.num_beams,
        length_penalty=request.length_penalty,
        early_stopping=request.early_stopping,
        num_return_sequences=request.num_return_sequences,
        max_new_tokens=request.max_new_tokens or settings.default_max_new_tokens,
    )
    return TranslationJob(
        request.pair, tuple(texts), options, tuple(source_tokens), tuple(tuple(ids) for ids in source_ids)
    )


def build_response(hypotheses: list[list[str]], model: str) -> TranslateResponse:
    alternatives = hypotheses if any(len(h) > 1 for h in hypotheses) else None
    return TranslateResponse(translations=[h[0] for h in hypotheses], alternatives=alternatives, model=model)
