"""API errors, API keys and per-key rate limiting (token buckets), as small pure pieces.

``/v1`` requires ``X-API-Key`` when keys are configured, and each key gets its own token bucket;
with no keys configured (local use) ``/v1`` is open and unlimited. ``/ping`` and ``/invocations``
follow the SageMaker hosting contract instead (the endpoint's IAM auth is in front of them).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable


class ApiError(Exception):
    """An answer that names the problem and the fix: rendered as ``{"error", "message", ...}``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class ApiKeys:
    """API key -> partner id; no keys configured means no authentication (local use)."""

    def __init__(self, keys: dict[str, str]):
        self.keys = dict(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def partner_for(self, key: str | None) -> str | None:
        """The key's partner (None when authentication is off); ``ApiError`` 401 for a bad key."""
        if not self.enabled:
            return None
        if not key:
            raise ApiError(401, "missing_api_key", "send your API key in the X-API-Key header",
                           headers={"WWW-Authenticate": "ApiKey"})
        partner = self.keys.get(key)
        if partner is None:
            raise ApiError(401, "invalid_api_key", "the X-API-Key is not valid; ask for a key or check for typos",
                           headers={"WWW-Authenticate": "ApiKey"})
        return partner


class RateLimiter:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def acquire(self, key: str) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def check(self, key: str) -> None:
        """``ApiError`` 429 with ``Retry-After`` (whole seconds, at least 1) when the bucket is empty."""
        wait = self.acquire(key)
        if wait > 0:
            raise ApiError(429, "rate_limited",
                           f"too many requests for this API key (limit {self.rate:g}/s, burst {self.burst:g}); "
                           f"retry after {wait:.2f}s",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
