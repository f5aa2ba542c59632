"""API keys: `Authorization: Bearer <key>` on REST, `authorization: Bearer <key>` metadata on gRPC.

A client takes its key from the `api_key` argument, else from `MODELSERVE_API_KEY`; `api_key=""`
sends none even when the variable is set. Servers without keys configured ignore the header.
"""

import os

from .errors import AuthenticationError, ModelServeError

API_KEY_ENV = "MODELSERVE_API_KEY"


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The key to send, or None. Raises ValueError for a key no header could carry."""
    key = (os.environ.get(API_KEY_ENV, "") if api_key is None else api_key).strip()
    if not key:
        return None
    # Header and metadata values are visible ASCII; a pasted newline or space would break the request.
    if not all("!" <= ch <= "~" for ch in key):
        source = f" in ${API_KEY_ENV}" if api_key is None else ""
        raise ValueError(f"the API key{source} must be printable ASCII without spaces or line breaks")
    return key


def bearer(key: str) -> str:
    return f"Bearer {key}"


def explain(error: ModelServeError, key_sent: bool) -> ModelServeError:
    """An authentication failure says whether a key was sent and where one comes from."""
    if isinstance(error, AuthenticationError):
        hint = (
            "the API key sent was refused"
            if key_sent
            else f"no API key sent: set {API_KEY_ENV} or pass an API key"
        )
        error.message = f"{error.message} ({hint})"
        error.args = (error.message,)
    return error
