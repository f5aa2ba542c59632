"""API keys, off unless configured, as in OpenAI-compatible servers.

`MODELSERVE_API_KEYS` (comma-separated) or `MODELSERVE_API_KEYS_FILE` (one key per line, e.g. a mounted
Kubernetes Secret, re-read when it changes) turn them on for every REST route and gRPC method but the
health checks. Keys are compared as SHA-256 digests in constant time and never logged.
"""

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

KEYS_ENV = "MODELSERVE_API_KEYS"
KEYS_FILE_ENV = "MODELSERVE_API_KEYS_FILE"
# How often a mounted key file is checked for rotation.
FILE_CHECK_S = 5.0


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse(text: str, separator: str) -> list[str]:
    return [key.strip() for key in text.split(separator) if key.strip() and not key.strip().startswith("#")]


class ApiKeys:
    def __init__(self, keys: list[str] | None = None, file: str | None = None):
        self._static = [_digest(key) for key in keys or []]
        self._file = Path(file) if file else None
        self._file_digests: list[bytes] = []
        self._file_stamp: tuple[float, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self._file is not None:
            self._reload_file()
            if not self._file_digests:
                log.warning("API key file %s is absent or empty: it adds no keys", self._file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ApiKeys":
        environ = os.environ if environ is None else environ
        return cls(_parse(environ.get(KEYS_ENV, ""), ","), environ.get(KEYS_FILE_ENV) or None)

    @property
    def enabled(self) -> bool:
        self._maybe_reload()
        return bool(self._static or self._file_digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header (or gRPC metadata) value carries a valid key."""
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        given = _digest(key.strip())
        # Check every key, so the time taken does not tell which one came close.
        matched = False
        for digest in self._static + self._file_digests:
            matched |= hmac.compare_digest(given, digest)
        return matched

    def _maybe_reload(self) -> None:
        if self._file is None or time.monotonic() - self._checked_at < FILE_CHECK_S:
            return
        with self._lock:
            self._reload_file()

    def _reload_file(self) -> None:
        self._checked_at = time.monotonic()
        try:
            stat = self._file.stat()
        except OSError:
            self._file_digests, self._file_stamp = [], None
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._file_stamp:
            return
        try:
            text = self._file.read_text()
        except OSError as exc:
            log.error("cannot read API key file %s: %s", self._file, exc.strerror)
            return
        self._file_digests = [_digest(key) for key in _parse(text, "\n")]
        self._file_stamp = stamp
        log.info("API keys: %d loaded from %s", len(self._file_digests), self._file)
