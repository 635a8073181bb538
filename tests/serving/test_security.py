import pytest

from serving.security import ApiError, ApiKeys, RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    assert limiter.acquire("other") == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    clock.now += 100
    assert [limiter.acquire("k") for _ in range(4)][-1] > 0  # never more than the burst saved up


def test_rate_limit_error_carries_retry_after_in_whole_seconds():
    clock = FakeClock()
    limiter = RateLimiter(rate=0.25, burst=1, clock=clock)
    limiter.check("k")
    with pytest.raises(ApiError) as caught:
        limiter.check("k")
    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "4"}


def test_api_keys():
    keys = ApiKeys({"s3cret": "acme"})
    assert keys.partner_for("s3cret") == "acme"
    for bad in (None, "", "wrong"):
        with pytest.raises(ApiError) as caught:
            keys.partner_for(bad)
        assert caught.value.status == 401
    assert ApiKeys({}).partner_for(None) is None  # authentication off
