"""When to retry and how long to wait, shared by the REST and gRPC clients.

Only failures that say "try again" are retried: overload (429, 503, RESOURCE_EXHAUSTED), an
unavailable backend (502, 503, UNAVAILABLE: loading, draining, a rolling update) and connections
that could not be opened (nothing reached the server). Other 4xx, 500 and deadline errors are
final: retrying a bad request cannot help and retrying a timed-out one doubles the load. The
server's Retry-After wins over the exponential backoff; a Retry-After longer than
`max_retry_after` means "not any time soon", so the error is raised at once.
"""

import random
from dataclasses import dataclass

from .errors import ConnectionFailedError, ModelServeError, OverloadedError, UnavailableError

RETRYABLE = (OverloadedError, UnavailableError, ConnectionFailedError)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # first try included; 1 turns retries off
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20% so that clients refused together do not come back together
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, error: ModelServeError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up and raise `error`."""
        if attempt >= self.max_attempts or not isinstance(error, RETRYABLE):
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return backoff * random.uniform(1 - self.jitter, 1 + self.jitter)


NO_RETRY = RetryPolicy(max_attempts=1)
