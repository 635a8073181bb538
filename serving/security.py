"""API keys and rate limits (token buckets) shared by every worker that serves the API.

``/v1`` requires ``X-API-Key`` when keys are configured, and each key gets its own token bucket;
with no keys configured (local use) ``/v1`` is open and unlimited. ``/invocations`` requires a
key too when keys are configured, except in SageMaker mode, where the endpoint's IAM auth is in
front of it; ``/ping`` is always open (health checks).

Keys are compared in constant time over every configured key (``hmac.compare_digest`` on their
SHA-256, so neither the matching key nor its length shows in the timing). Failed
authentications are limited per client address: once an address has used up its failures,
every request from it is refused with 429 before its key is even looked at, so guessing keys
gets no answer at all.

Where the buckets live decides what a limit means:

- ``LocalBuckets``: in this process (one worker; N workers would allow N times the rate).
- ``SqliteBuckets``: a SQLite file shared by the workers of one host (``appsim serve
  --workers N`` prepares it); one atomic UPSERT per take.
- ``RedisBuckets``: a Redis server shared by every host (``APPSIM_REDIS_URL``, the seed's
  ElastiCache): an atomic Lua token bucket on the server's clock.

A shared store that fails (Redis down, a locked file) does not take the API down: the limiter
falls back to this process's own buckets for ``FALLBACK_SECONDS``, logs it once, and counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import sqlite3
import threading
import time
from typing import Callable, Protocol

from serving.errors import ApiError

log = logging.getLogger("appsim.serving")

FALLBACK_SECONDS = 5.0
# Local buckets are pruned of full (idle) entries every this many takes, so per-address buckets
# of failed authentications cannot grow without bound.
PRUNE_EVERY = 4096


class RateLimitStoreError(RuntimeError):
    """The shared bucket store could not be reached or updated."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """API key -> partner id; no keys configured means no authentication (local use)."""

    def __init__(self, keys: dict[str, str]):
        self._digests = [(key_digest(key), partner) for key, partner in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def partner_for(self, key: str | None) -> str | None:
        """The key's partner (None when authentication is off); ``ApiError`` 401 for a bad key."""
        if not self.enabled:
            return None
        if not key:
            raise ApiError(401, "missing_api_key", "send your API key in the X-API-Key header",
                           headers={"WWW-Authenticate": "ApiKey"})
        digest = key_digest(key)
        partner = None
        for known, name in self._digests:  # no early exit: the same work whichever key matches
            if hmac.compare_digest(digest, known):
                partner = name
        if partner is None:
            raise ApiError(401, "invalid_api_key", "the X-API-Key is not valid; ask for a key or check for typos",
                           headers={"WWW-Authenticate": "ApiKey"})
        return partner


# --- bucket stores -------------------------------------------------------------------------------
class TokenBuckets(Protocol):
    async def take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """Refill ``bucket`` (``rate`` tokens a second, at most ``burst``), then take ``cost`` tokens
        if at least one is there: 0.0 when allowed, else the seconds until a token is available.
        ``cost=0`` only looks."""
        ...

    async def close(self) -> None: ...


def _refill(tokens: float, elapsed: float, rate: float, burst: float) -> float:
    return min(burst, tokens + max(0.0, elapsed) * rate)


class LocalBuckets:
    """Buckets in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, tuple[float, float, float]] = {}  # name -> (tokens, updated, full at)
        self._takes = 0

    def take_now(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        now = self.clock()
        tokens, updated, _ = self._buckets.get(bucket, (burst, now, now))
        tokens = _refill(tokens, now - updated, rate, burst)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= cost
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[bucket] = (tokens, now, now + (burst - tokens) / rate)
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:
            self._buckets = {name: state for name, state in self._buckets.items() if state[2] > now}
        return wait

    async def take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        return self.take_now(bucket, rate, burst, cost)

    async def close(self) -> None:
        return None


# One statement, so one atomic step for every worker on the host. In an UPSERT's SET clause the
# columns are the row's values before the update; a bucket whose full time has passed is pruned.
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL, full_at REAL NOT NULL,
    granted INTEGER NOT NULL
) WITHOUT ROWID
"""
_SQLITE_TAKE = """
INSERT INTO buckets (name, tokens, updated, full_at, granted)
VALUES (:name, :burst - :cost, :now, :now + :cost / :rate, 1)
ON CONFLICT (name) DO UPDATE SET
    granted = (min(:burst, tokens + max(0, :now - updated) * :rate) >= 1),
    tokens = min(:burst, tokens + max(0, :now - updated) * :rate)
             - (CASE WHEN min(:burst, tokens + max(0, :now - updated) * :rate) >= 1 THEN :cost ELSE 0 END),
    updated = :now,
    full_at = :now + (:burst - min(:burst, tokens + max(0, :now - updated) * :rate)
             + (CASE WHEN min(:burst, tokens + max(0, :now - updated) * :rate) >= 1 THEN :cost ELSE 0 END)) / :rate
RETURNING tokens, granted
"""


class SqliteBuckets:
    """Buckets in a SQLite file shared by the workers of one host (the clock is CLOCK_MONOTONIC,
    the same for every process on the host; the file is made fresh at each start)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()  # one connection per store, used by the event loop and tests' threads
        self._takes = 0
        try:
            self._db = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
            # WAL: readers never block; synchronous=OFF: buckets are not worth an fsync (a crash loses a few
            # seconds of refill state, nothing else).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute(_SQLITE_SCHEMA)
        except sqlite3.Error as error:
            raise RateLimitStoreError(f"cannot open the rate-limit file {path}: {error}") from None

    def take_now(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        now = self.clock()
        try:
            with self._lock:
                tokens, granted = self._db.execute(
                    _SQLITE_TAKE, {"name": bucket, "rate": rate, "burst": burst, "cost": cost, "now": now}).fetchone()
                self._takes += 1
                if self._takes % PRUNE_EVERY == 0:
                    self._db.execute("DELETE FROM buckets WHERE full_at < ?", (now,))
        except sqlite3.Error as error:
            raise RateLimitStoreError(f"rate-limit file {self.path}: {error}") from None
        return 0.0 if granted else (1.0 - tokens) / rate

    async def take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        # ~10-30 us on a local file: cheaper inline than a thread hop.
        return self.take_now(bucket, rate, burst, cost)

    async def close(self) -> None:
        with self._lock:
            self._db.close()


# The server's clock (TIME) is the one clock every host agrees on. The wait is returned as a
# string: Redis turns Lua numbers into integers.
_REDIS_TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, updated = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - cost else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    """Buckets in Redis, shared by every host: one atomic Lua script per take."""

    PREFIX = "appsim:ratelimit:"

    def __init__(self, url: str, timeout_seconds: float = 0.25):
        import redis.asyncio  # only where Redis is configured

        self.url = url
        self._redis_errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_seconds,
                                                    socket_connect_timeout=timeout_seconds)
        self._script = self._client.register_script(_REDIS_TAKE)

    async def take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        try:
            wait = await self._script(keys=[self.PREFIX + bucket], args=[repr(rate), repr(burst), repr(cost)])
        except self._redis_errors as error:
            raise RateLimitStoreError(f"Redis at {redacted(self.url)}: {error}") from None
        return float(wait)

    async def close(self) -> None:
        await self._client.aclose()


def redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


# --- limits ---------------------------------------------------------------------------------------
class RateLimiter:
    """The API's limits over one bucket store: per key, and per address for failed authentications.

    A store error falls back to per-process buckets for ``FALLBACK_SECONDS`` (limits still hold
    per worker), logged once and counted in ``store_errors``."""

    def __init__(self, store: TokenBuckets, *, rate: float, burst: float, failure_rate: float,
                 failure_burst: float, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.rate = rate
        self.burst = burst
        self.failure_rate = failure_rate
        self.failure_burst = failure_burst
        self.clock = clock
        self.fallback = LocalBuckets(clock)
        self.store_errors = 0
        self._shared_again_at = 0.0

    async def _take(self, bucket: str, rate: float, burst: float, cost: float = 1.0) -> float:
        if self.clock() >= self._shared_again_at:
            try:
                return await self.store.take(bucket, rate, burst, cost)
            except RateLimitStoreError as error:
                self.store_errors += 1
                self._shared_again_at = self.clock() + FALLBACK_SECONDS
                log.warning("rate limits fall back to this worker's own buckets for %gs: %s", FALLBACK_SECONDS, error)
        return self.fallback.take_now(bucket, rate, burst, cost)

    async def check_key(self, key: str) -> None:
        """``ApiError`` 429 with ``Retry-After`` (whole seconds, at least 1) when the key's bucket is empty."""
        wait = await self._take("key:" + key_digest(key).hex()[:32], self.rate, self.burst)
        if wait > 0:
            raise ApiError(429, "rate_limited",
                           f"too many requests for this API key (limit {self.rate:g}/s, burst {self.burst:g}); "
                           f"retry after {wait:.2f}s", headers=_retry_after(wait))

    async def check_address(self, address: str) -> None:
        """``ApiError`` 429 when ``address`` has used up its failed authentications (takes nothing)."""
        wait = await self._take("auth-failures:" + address, self.failure_rate, self.failure_burst, cost=0.0)
        if wait > 0:
            raise ApiError(429, "too_many_failed_authentications",
                           f"too many requests with a missing or invalid API key from this address (limit "
                           f"{self.failure_burst:g}, then {self.failure_rate * 60:g} a minute); check the key and "
                           f"retry after {wait:.0f}s", headers=_retry_after(wait))

    async def record_failure(self, address: str) -> None:
        await self._take("auth-failures:" + address, self.failure_rate, self.failure_burst)

    async def authenticate(self, keys: ApiKeys, key: str | None, address: str) -> str | None:
        """The key's partner after every check (None when authentication is off), else ``ApiError``."""
        if not keys.enabled:
            return None
        await self.check_address(address)
        try:
            partner = keys.partner_for(key)
        except ApiError:
            await self.record_failure(address)
            raise
        await self.check_key(key)  # type: ignore[arg-type]
        return partner

    async def close(self) -> None:
        await self.store.close()


def _retry_after(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}


def open_bucket_store(redis_url: str | None, rate_limit_file: str | None) -> TokenBuckets:
    """Redis when configured (every host), else the host's shared file, else this process's memory."""
    if redis_url:
        return RedisBuckets(redis_url)
    if rate_limit_file:
        return SqliteBuckets(rate_limit_file)
    return LocalBuckets()
