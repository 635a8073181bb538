import asyncio
import hmac
import multiprocessing

import pytest

from serving import security
from serving.errors import ApiError
from serving.security import (
    ApiKeys, LocalBuckets, RateLimiter, RedisBuckets, SqliteBuckets, open_bucket_store, redacted,
)
from tests.serving.helpers import free_port
from tests.serving.redis_server import redis_server


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def take(store, bucket="k", rate=2.0, burst=3, cost=1.0):
    """Synchronous takes for the local stores (their takes never wait on I/O)."""
    return store.take_now(bucket, rate, burst, cost)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["local", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBuckets()
    if request.param == "sqlite":
        return SqliteBuckets(str(tmp_path / "buckets.db"))
    url = request.getfixturevalue("redis_url")
    return RedisBuckets(url)


def test_every_store_allows_the_burst_then_says_how_long_to_wait(store):
    async def run():
        # A rate this slow refills nothing while the test runs, whatever clock the store uses (Redis: the server's).
        slow = {"rate": 0.001, "burst": 3}
        first = [await store.take("k", **slow) for _ in range(4)]
        other = await store.take("other", **slow)  # buckets are per name
        peeks = [await store.take("peek", 0.001, 1, cost=0), await store.take("peek", 0.001, 1),
                 await store.take("peek", 0.001, 1, cost=0)]  # cost 0 looks without taking
        await store.close()
        return first, other, peeks

    first, other, peeks = asyncio.run(run())
    assert first == [0.0, 0.0, 0.0, pytest.approx(1000, rel=0.01)]
    assert other == 0.0
    assert peeks[:2] == [0.0, 0.0] and peeks[2] > 0


@pytest.mark.parametrize("kind", ["local", "sqlite"])
def test_buckets_refill_at_the_rate_up_to_the_burst(kind, tmp_path):
    clock = FakeClock()
    store = LocalBuckets(clock) if kind == "local" else SqliteBuckets(str(tmp_path / "b.db"), clock)
    assert [take(store) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(store) == pytest.approx(0.5)
    clock.now += 0.5
    assert take(store) == 0.0
    clock.now += 100
    assert [take(store) for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]  # never more than the burst


def _take_many(path: str, count: int, results) -> None:
    store = SqliteBuckets(path)
    results.put(sum(store.take_now("shared", 0.001, 25) == 0.0 for _ in range(count)))


def test_the_sqlite_store_is_one_bucket_for_every_process_of_the_host(tmp_path):
    """Four processes hammer one bucket: together they get the burst, not four times it."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_take_many, args=(str(tmp_path / "b.db"), 40, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    granted = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sum(granted) == 25 and all(w.exitcode == 0 for w in workers)


def test_redis_buckets_are_shared_by_every_client(redis_url):
    async def run():
        hosts = [RedisBuckets(redis_url) for _ in range(3)]
        granted = [await hosts[i % 3].take("key:x", 0.001, 7) == 0.0 for i in range(12)]
        for host in hosts:
            await host.close()
        return granted

    granted = asyncio.run(run())
    assert sum(granted) == 7 and granted[:7] == [True] * 7


def test_a_failing_shared_store_falls_back_to_per_process_limits():
    clock = FakeClock()
    unreachable = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5)
    limiter = RateLimiter(unreachable, rate=0.001, burst=2, failure_rate=1, failure_burst=1, clock=clock)

    async def run():
        await limiter.check_key("k")
        await limiter.check_key("k")
        with pytest.raises(ApiError) as caught:
            await limiter.check_key("k")  # the limit still holds, per process
        return caught.value

    assert asyncio.run(run()).status == 429
    assert limiter.store_errors == 1  # one failure, then the store is left alone for a while


def test_rate_limit_error_carries_retry_after_in_whole_seconds():
    limiter = RateLimiter(LocalBuckets(FakeClock()), rate=0.25, burst=1, failure_rate=1, failure_burst=1)

    async def run():
        await limiter.check_key("k")
        await limiter.check_key("k")

    with pytest.raises(ApiError) as caught:
        asyncio.run(run())
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    assert caught.value.headers == {"Retry-After": "4"}


def test_failed_authentications_are_limited_per_address_even_for_the_right_key():
    keys = ApiKeys({"s3cret": "acme"})
    limiter = RateLimiter(LocalBuckets(FakeClock()), rate=100, burst=100, failure_rate=1 / 60, failure_burst=3)

    async def attempt(key, address="10.0.0.1"):
        try:
            return await limiter.authenticate(keys, key, address)
        except ApiError as error:
            return error.status

    async def run():
        guesses = [await attempt(f"guess-{i}") for i in range(5)]
        return guesses, await attempt("s3cret"), await attempt("s3cret", "10.0.0.2"), await attempt(None, "10.0.0.3")

    guesses, right_key_same_address, other_address, missing = asyncio.run(run())
    assert guesses == [401, 401, 401, 429, 429]
    assert right_key_same_address == 429  # a guess that hits gets no different answer while throttled
    assert other_address == "acme" and missing == 401


def test_api_keys_compare_every_key_in_constant_time(monkeypatch):
    keys = ApiKeys({"s3cret": "acme", "other-key": "globex", "third": "initech"})
    calls = []
    compare = hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or compare(a, b))
    assert keys.partner_for("s3cret") == "acme"
    with pytest.raises(ApiError):
        keys.partner_for("wrong-and-much-longer-than-any-key")
    assert len(calls) == 6 and set(calls) == {(32, 32)}  # every key, every time, on equal-length digests


def test_api_keys():
    keys = ApiKeys({"s3cret": "acme"})
    assert keys.partner_for("s3cret") == "acme"
    for bad in (None, "", "wrong"):
        with pytest.raises(ApiError) as caught:
            keys.partner_for(bad)
        assert caught.value.status == 401
    assert ApiKeys({}).partner_for(None) is None  # authentication off


def test_store_choice_and_redacted_urls(tmp_path):
    assert isinstance(open_bucket_store(None, None), LocalBuckets)
    assert isinstance(open_bucket_store(None, str(tmp_path / "b.db")), SqliteBuckets)
    assert isinstance(open_bucket_store("redis://127.0.0.1:1/0", str(tmp_path / "b.db")), RedisBuckets)
    assert redacted("rediss://user:pw@cache:6379/0") == "rediss://***@cache:6379/0"
    assert redacted("redis://cache:6379") == "redis://cache:6379"
