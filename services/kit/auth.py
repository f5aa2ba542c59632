"""API keys, off unless configured, as in OpenAI-compatible servers; admin keys for admin operations.

`MODELSERVE_API_KEYS` (comma-separated) or `MODELSERVE_API_KEYS_FILE` (one key per line, e.g. a mounted
Kubernetes Secret, re-read when it changes) turn them on for every REST route and gRPC method but the
health checks. Keys are compared as SHA-256 digests in constant time and never logged.

Keys fail closed: once either variable is set a key is required, whatever the file holds. A key file that
becomes empty, unreadable or missing keeps the last keys read from it (none if it never had any: then only
the keys of `MODELSERVE_API_KEYS` are accepted, or none at all) and logs an error once per change of state.

`MODELSERVE_ADMIN_KEYS` / `MODELSERVE_ADMIN_KEYS_FILE` (same rules) name the keys admin operations need (the
ViT server's config reload); an admin key is also accepted wherever an API key is.
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
ADMIN_KEYS_ENV = "MODELSERVE_ADMIN_KEYS"
ADMIN_KEYS_FILE_ENV = "MODELSERVE_ADMIN_KEYS_FILE"
# How often a mounted key file is checked for rotation.
FILE_CHECK_S = 5.0


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse(text: str, separator: str) -> list[str]:
    return [key.strip() for key in text.split(separator) if key.strip() and not key.strip().startswith("#")]


def bearer_key(authorization: str | None) -> bytes | None:
    """The digest of the key in an `Authorization: Bearer <key>` value, or None when it carries none."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return _digest(key.strip())


class KeySet:
    """The keys of one setting pair (a list and/or a file), failing closed: a file that loses its keys keeps
    the last good ones."""

    def __init__(self, keys: list[str] | None, file: str | None, kind: str):
        self.kind = kind
        self._static = [_digest(key) for key in keys or []]
        self._file = Path(file) if file else None
        self.configured = bool(self._static) or self._file is not None
        self._file_digests: list[bytes] = []
        self._file_stamp: tuple[float, int] | None = None
        self._file_problem: str | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self._file is not None:
            self._reload_file()

    def matches(self, given: bytes) -> bool:
        self._maybe_reload()
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
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._file_stamp:
                return
            digests = [_digest(key) for key in _parse(self._file.read_text(encoding="utf-8"), "\n")]
        except (OSError, UnicodeDecodeError) as exc:
            self._keep_last_good(f"cannot be read ({getattr(exc, 'strerror', None) or exc})")
            return
        if not digests:
            self._keep_last_good("holds no key")
            return
        self._file_digests, self._file_stamp, self._file_problem = digests, stamp, None
        log.info("%s keys: %d loaded from %s", self.kind, len(digests), self._file)

    def _keep_last_good(self, problem: str) -> None:
        # Read again on the next check, however the file's stamp looks then.
        self._file_stamp = None
        if problem == self._file_problem:
            return
        self._file_problem = problem
        kept = (
            f"keeping the {len(self._file_digests)} keys last read from it" if self._file_digests
            else "it never held a key, so only other configured keys are accepted"
        )
        log.error("%s key file %s %s: %s", self.kind, self._file, problem, kept)


class ApiKeys:
    def __init__(
        self,
        keys: list[str] | None = None,
        file: str | None = None,
        admin_keys: list[str] | None = None,
        admin_file: str | None = None,
    ):
        self.users = KeySet(keys, file, "API")
        self.admins = KeySet(admin_keys, admin_file, "admin")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ApiKeys":
        environ = os.environ if environ is None else environ
        return cls(
            _parse(environ.get(KEYS_ENV, ""), ","),
            environ.get(KEYS_FILE_ENV) or None,
            _parse(environ.get(ADMIN_KEYS_ENV, ""), ","),
            environ.get(ADMIN_KEYS_FILE_ENV) or None,
        )

    @property
    def enabled(self) -> bool:
        """Whether every request needs a key: API keys are configured, whether or not any could be read."""
        return self.users.configured

    @property
    def admin_required(self) -> bool:
        """Whether admin operations need an admin key: any keys are configured."""
        return self.users.configured or self.admins.configured

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header (or gRPC metadata) value carries a valid key."""
        if not self.enabled:
            return True
        given = bearer_key(authorization)
        if given is None:
            return False
        # Both sets are checked whatever the first says: the time taken does not tell which kind matched.
        user, admin = self.users.matches(given), self.admins.matches(given)
        return user or admin

    def refusal(self, authorizations: list[str | None]) -> str | None:
        """Why a request carrying these `Authorization` values (headers or metadata entries) is refused:
        "repeated" (a proxy in front may check one and this server another: neither is trusted), "missing" or
        "invalid"; None when it is let in. With keys off nothing reads them, so nothing is refused."""
        if not self.enabled:
            return None
        if len(authorizations) > 1:
            return "repeated"
        if not authorizations:
            return "missing"
        return None if self.allows(authorizations[0]) else "invalid"

    def allows_admin(self, authorization: str | None) -> bool:
        """Whether the value carries an admin key (True for anyone when no keys are configured at all)."""
        if not self.admin_required:
            return True
        given = bearer_key(authorization)
        return given is not None and self.admins.matches(given)
