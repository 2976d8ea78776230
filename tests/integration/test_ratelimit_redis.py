"""The token bucket on the real Redis: exact under contention from many clients."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from errand_api.ratelimit import TokenBucket

from resources import REDIS_URL

pytestmark = pytest.mark.integration


def test_concurrent_takes_allow_exactly_the_burst_and_refuse_the_rest(redis_prefix: str) -> None:
    # Given a bucket of 40 that barely refills, and 8 API replicas' worth of clients
    clients = [redis.Redis.from_url(REDIS_URL) for _ in range(8)]
    buckets = [TokenBucket(c, redis_prefix) for c in clients]
    try:
        # When 400 takes race for it
        with ThreadPoolExecutor(16) as pool:
            decisions = list(
                pool.map(lambda i: buckets[i % 8].take("racer", 0.0001, 40), range(400))
            )
        # Then exactly the burst is allowed, and every refusal says when to come back
        assert sum(d.allowed for d in decisions) == 40
        refused = [d for d in decisions if not d.allowed]
        assert len(refused) == 360
        assert all(d.retry_after_s > 0 and d.remaining == 0 for d in refused)
        assert "Retry-After" in refused[0].headers()
    finally:
        for c in clients:
            c.close()


def test_tokens_refill_at_the_rate_up_to_the_burst(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    bucket = TokenBucket(client, redis_prefix)
    key = f"{redis_prefix}ratelimit:refill"
    try:
        assert bucket.take("refill", 10, 5, cost=5).allowed
        assert not bucket.take("refill", 10, 5).allowed
        # Pretend a second passed: 10 tokens/s refills the bucket, capped at its burst of 5
        client.hset(key, "ts", float(client.hget(key, "ts") or 0) - 1.0)
        decision = bucket.take("refill", 10, 5)
        assert decision.allowed
        assert decision.remaining == 4
    finally:
        client.close()
