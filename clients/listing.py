"""GET /v1/models: one OpenAI-shaped list for every service behind a URL."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelEntry:
    id: str
    service: str
    owned_by: str = "modelserve"
    extra: dict = field(default_factory=dict)  # service-specific fields (language pair, sample rate...)

    @classmethod
    def from_json(cls, entry: dict) -> "ModelEntry":
        known = {"id", "service", "owned_by", "object"}
        extra = {key: value for key, value in entry.items() if key not in known}
        return cls(entry["id"], entry.get("service", ""), entry.get("owned_by", ""), extra)


def parse_models(body: dict) -> list[ModelEntry]:
    return [ModelEntry.from_json(entry) for entry in body.get("data", [])]


def models_of(body: dict, service: str) -> list[ModelEntry]:
    return [entry for entry in parse_models(body) if entry.service == service]
