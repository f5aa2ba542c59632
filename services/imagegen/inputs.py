"""Image references of the JSON edits route (`{"image_url": ...}` or `{"file_id": ...}`) turned into bytes.

data: URLs are decoded here; remote URLs are fetched only from hosts the operator allows
(IMAGEGEN_REMOTE_IMAGE_HOSTS), without redirects, with a byte cap and a timeout. The bytes then go
through the same decoder, with the same pixel limit, as uploaded files.
"""

import asyncio
import base64
import binascii
import re
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from services.kit.decoding import run_decoding
from services.kit.errors import InvalidArgument, PayloadTooLarge

DATA_URL = re.compile(
    r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<base64>;base64)?,"
)
FETCH_CHUNK = 64 * 1024


class ImageReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(
        None, description="a data: URL (base64), or an http(s) URL on an allowed host"
    )
    file_id: str | None = Field(None, description="refused: this server has no Files API")


def base64_size(text_length: int) -> int:
    return text_length * 3 // 4


async def load_reference(
    reference: ImageReference, field: str, *, allowed_hosts: list[str], max_bytes: int, timeout_s: float
) -> bytes:
    if reference.file_id is not None:
        raise InvalidArgument(
            f"{field}.file_id: this server has no Files API; send image_url with a data: URL "
            "(data:image/png;base64,...) or upload the file to /v1/images/edits as multipart/form-data",
            field=f"{field}.file_id",
        )
    if not reference.image_url:
        raise InvalidArgument(f"{field}: give image_url (a data: URL)", field=field)
    url = reference.image_url
    if url[:5].lower() == "data:":
        return await run_decoding(decode_data_url, url, f"{field}.image_url", max_bytes)
    return await fetch_remote(
        url, f"{field}.image_url", allowed_hosts=allowed_hosts, max_bytes=max_bytes, timeout_s=timeout_s
    )


def decode_data_url(url: str, field: str, max_bytes: int) -> bytes:
    match = DATA_URL.match(url)
    if match is None or not match["base64"]:
        raise InvalidArgument(f"{field}: expected data:<media type>;base64,<data>", field=field)
    encoded = url[match.end() :]
    if base64_size(len(encoded)) > max_bytes:
        raise PayloadTooLarge(f"{field}: the image exceeds {max_bytes} bytes", field=field)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field}: the data: URL is not valid base64", field=field) from None


def host_allowed(url: str, allowed_hosts: list[str]) -> tuple[bool, str]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    names = {host} if port is None else {host, f"{host}:{port}"}
    return bool(host) and bool(names & set(allowed_hosts)), host


async def fetch_remote(
    url: str, field: str, *, allowed_hosts: list[str], max_bytes: int, timeout_s: float
) -> bytes:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidArgument(
            f"{field}: expected a data: URL (or http/https), got {scheme or url[:20]!r}", field=field
        )
    allowed, host = host_allowed(url, allowed_hosts)
    if not allowed:
        raise InvalidArgument(
            f"{field}: remote images are fetched only from hosts IMAGEGEN_REMOTE_IMAGE_HOSTS names, "
            f"and {host!r} is not one; send the image as a data: URL",
            field=field,
        )
    try:
        # The whole fetch gets timeout_s: httpx's own timeout is per read, which a trickling server stretches.
        async with asyncio.timeout(timeout_s):
            return await _download(url, field, max_bytes, timeout_s)
    except TimeoutError:
        raise InvalidArgument(f"{field}: not fetched within {timeout_s:g} s", field=field) from None
    except httpx.HTTPError as exc:
        raise InvalidArgument(
            f"{field}: could not fetch it ({type(exc).__name__}: {exc})", field=field
        ) from None


async def _download(url: str, field: str, max_bytes: int, timeout_s: float) -> bytes:
    too_large = PayloadTooLarge(f"{field}: the image exceeds {max_bytes} bytes", field=field)
    # identity only: the byte cap then bounds what is stored (no decompression bomb).
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                raise InvalidArgument(
                    f"{field}: fetching it answered HTTP {response.status_code} (redirects are not followed)",
                    field=field,
                )
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise InvalidArgument(
                    f"{field}: the host sent a compressed body; expected identity", field=field
                )
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise too_large
            data = bytearray()
            async for chunk in response.aiter_raw(FETCH_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise too_large
            return bytes(data)
