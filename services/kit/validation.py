"""Turn pydantic validation failures into InvalidArgument naming the field, for REST and gRPC alike."""

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InvalidArgument

Model = TypeVar("Model", bound=BaseModel)

_LOCATION_PREFIXES = ("body", "query", "path", "form")


def describe(errors: Sequence[Mapping[str, Any]]) -> InvalidArgument:
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidArgument(f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
        return InvalidArgument("request body must be a JSON object (send Content-Type: application/json)")
    location = [str(part) for part in first.get("loc", ()) if part not in _LOCATION_PREFIXES]
    field = ".".join(location) or None
    message = str(first.get("msg"))
    return InvalidArgument(f"{field}: {message}" if field else message, field=field)


def parse(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe(exc.errors()) from None
