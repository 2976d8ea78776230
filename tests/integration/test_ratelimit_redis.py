"""The token bucket on the real Redis: exact under contention from many clients; and
what it does when Redis cannot be reached (refused, or connected and silent)."""

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from prometheus_client import REGISTRY

from errand_api.authcache import bump_epoch, epoch_key
from errand_api.errors import RateLimitUnavailable
from errand_api.ratelimit import TokenBucket
from errand_schema.redis_guard import guarded_redis

from helpers import SilentServer
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


def _unchecked() -> float:
    return REGISTRY.get_sample_value("errand_rate_limit_unchecked_total") or 0.0


def test_a_redis_that_stops_answering_lets_submissions_through_unchecked(
    silent_redis: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the API's kind of client on a Redis that accepts connections, never answers
    client, breaker = guarded_redis(silent_redis.url, timeout_s=0.3)
    bucket = TokenBucket(client, "errand_test:silent:")
    before = _unchecked()
    try:
        with caplog.at_level(logging.WARNING, logger="errand_api.ratelimit"):
            # When submissions are checked, 5 of them with a burst of 1
            decisions = [bucket.take("someone", 1, 1) for _ in range(5)]
        # Then each is let through, unchecked: no count is claimed in headers
        assert all(d.allowed and not d.checked for d in decisions)
        assert all(d.headers() == {} for d in decisions)
        assert _unchecked() - before == 5
        # And only the first waited for Redis: the others did not ask it
        assert silent_redis.accepted == 1
        assert breaker.skipped >= 4
        warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
        assert len(warnings) == 1, "one warning per outage"
    finally:
        client.close()


def test_set_to_fail_closed_it_refuses_with_503_and_retry_after(redis_prefix: str) -> None:
    # Nothing listens on port 1: the connection is refused at once
    down, _ = guarded_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    bucket = TokenBucket(down, redis_prefix, fail_open=False)
    before = _unchecked()
    with pytest.raises(RateLimitUnavailable) as refused:
        bucket.take("someone", 10, 10)
    assert refused.value.status_code == 503
    assert int(refused.value.headers["Retry-After"]) >= 1
    # Refused again without asking Redis during the window, and never counted unchecked
    with pytest.raises(RateLimitUnavailable):
        bucket.take("someone", 10, 10)
    assert _unchecked() == before


def test_back_from_an_outage_the_count_is_kept_again(redis_prefix: str) -> None:
    # Given the API's kind of client, whose Redis failed a moment ago
    client, breaker = guarded_redis(REDIS_URL, timeout_s=1.0, open_s=30.0)
    bucket = TokenBucket(client, redis_prefix)
    try:
        breaker.failed(ConnectionError("a moment ago"))
        assert not bucket.take("back", 10, 2).checked
        # When the window has ended, takes are counted in Redis again
        breaker.expire()
        decision = bucket.take("back", 10, 2)
        assert decision.checked
        assert decision.headers()["RateLimit-Limit"] == "2"
    finally:
        client.close()


def test_a_batch_let_through_unchecked_counts_each_of_its_jobs() -> None:
    down, _ = guarded_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    before = _unchecked()
    assert not TokenBucket(down, "errand_test:down:").take("someone", 10, 100, cost=7).checked
    assert _unchecked() - before == 7


def test_a_revocation_asks_redis_once_the_breakers_window_ends(redis_prefix: str) -> None:
    # Given the API's client, whose breaker another call opened a moment ago
    client, breaker = guarded_redis(REDIS_URL, timeout_s=1.0, open_s=0.3)
    try:
        breaker.failed(ConnectionError("another call, a moment ago"))
        # When a revocation bumps the auth epoch
        bump_epoch(client, redis_prefix)
        # Then the bump waited for its turn and was made: other processes see it
        assert client.get(epoch_key(redis_prefix)) == b"1"
    finally:
        client.close()


def test_many_takes_in_one_round_trip_are_taken_in_order(redis_prefix: str) -> None:
    """``take_many`` (a group of submissions): each user's takes in the order given, as
    one after the other, in one pipeline; a script Redis does not know (restarted,
    flushed) is loaded once and the takes run then."""
    client = redis.Redis.from_url(REDIS_URL)
    bucket = TokenBucket(client, redis_prefix)
    bucket._script.sha = "0" * 40  # a digest Redis has never seen
    try:
        takes = [("a", 0.0001, 3, 1)] * 5 + [("b", 0.0001, 3, 2)] * 2
        decisions = bucket.take_many(takes)
        assert [d.allowed for d in decisions] == [True] * 3 + [False] * 2 + [True, False]  # type: ignore[union-attr]
        assert [d.remaining for d in decisions[:3]] == [2, 1, 0]  # type: ignore[union-attr]
        assert bucket._script.sha != "0" * 40
        assert bucket.take_many([("a", 0.0001, 3, 1)])[0].allowed is False  # type: ignore[union-attr]
    finally:
        client.close()


def test_many_takes_while_redis_is_away_are_each_let_through_or_refused() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    try:
        open_decisions = TokenBucket(client, "x:").take_many([("a", 1, 3, 1), ("b", 1, 3, 2)])
        assert [d.allowed and not d.checked for d in open_decisions] == [True, True]  # type: ignore[union-attr]
        closed = TokenBucket(client, "x:", fail_open=False).take_many([("a", 1, 3, 1)])
        assert isinstance(closed[0], RateLimitUnavailable)
    finally:
        client.close()
