"""Per-user submission rate limits: a token bucket in Redis, shared by every API replica.

One Lua script reads, refills and takes in a single atomic step on the server, so
replicas never race and a contended key costs one round trip, not a retry loop. (An
earlier ``WATCH``/``MULTI`` version retried under contention and let the request
through after its last retry; the benchmark showed both.) Dev mode's fakeredis runs
the same script through ``lupa``.

Redis is not where a job's truth lives (PostgreSQL and the broker are), so a Redis
outage does not stop submissions: a take that cannot reach Redis lets the submission
through unchecked (``errand_rate_limit_unchecked_total``, one warning per outage), or,
with ``fail_open=False``, refuses it with ``503``. The API's client does not wait for a
Redis that has just failed (:mod:`errand_schema.redis_guard`), so while Redis is away a
take costs nothing but one per window.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from errand_api import metrics
from errand_api.errors import RateLimitUnavailable

logger = logging.getLogger(__name__)

#: ``Retry-After`` of a submission refused because Redis is away (fail closed).
RETRY_AFTER_S = 2

#: KEYS[1] bucket; ARGV rate/s, burst, cost, now (s). Returns {allowed, tokens*1000}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
if now > stamp then tokens = math.min(burst, tokens + (now - stamp) * rate) end
local allowed = 0
if tokens >= cost then
  allowed = 1
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, stamp)))
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(burst / rate) + 1))
return {allowed, math.floor(tokens * 1000)}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of one take, with what the ``RateLimit-*`` headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    #: False when Redis could not be asked: let through without a count.
    checked: bool = True

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused); none for an
        unchecked take (there is no count to report)."""
        if not self.checked:
            return {}
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class TokenBucket:
    """``burst`` tokens per user, refilled at ``rate_per_s``; one token per job."""

    def __init__(self, client: Any, prefix: str, *, fail_open: bool = True) -> None:
        """``fail_open``: while Redis is unreachable, let submissions through unchecked
        (True) or refuse them with ``503`` (False)."""
        self._prefix = prefix
        self._client = client
        self._script = client.register_script(_TAKE)
        self._fail_open = fail_open
        self._lock = threading.Lock()
        #: Whether the outage in progress was logged.
        self._reported = False

    def take(self, user: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens for ``user`` if there are enough (atomically).

        Raises:
            RateLimitUnavailable: Redis is unreachable and ``fail_open`` is off.
        """
        key = f"{self._prefix}ratelimit:{user}"
        try:
            allowed, milli = self._script(keys=[key], args=[rate_per_s, burst, cost, time.time()])
        except (RedisConnectionError, RedisTimeoutError):  # an error reply is a 500
            self._report(away=True)
            return self._without_redis(burst, cost)
        if self._reported:
            self._report(away=False)
        return self._decision(bool(allowed), int(milli), rate_per_s, burst, cost)

    def take_many(self, takes: list[tuple[str, float, int, int]]) -> list[Decision | Exception]:
        """:meth:`take` for each ``(user, rate_per_s, burst, cost)`` in order, in one
        round trip (a pipeline of the same script: Redis runs each atomically, in this
        order). Each outcome is its decision, or the :class:`RateLimitUnavailable`
        :meth:`take` would have raised."""
        if not takes:
            return []
        now = time.time()
        try:
            try:
                replies = self._take_many(takes, now)
            except NoScriptError:  # Redis restarted or flushed its scripts: none ran
                self._script.sha = self._client.script_load(_TAKE)
                replies = self._take_many(takes, now)
        except (RedisConnectionError, RedisTimeoutError):
            self._report(away=True)
            out: list[Decision | Exception] = []
            for _user, _rate, burst, cost in takes:
                try:
                    out.append(self._without_redis(burst, cost))
                except RateLimitUnavailable as exc:
                    out.append(exc)
            return out
        if self._reported:
            self._report(away=False)
        return [
            self._decision(bool(allowed), int(milli), rate, burst, cost)
            for (allowed, milli), (_user, rate, burst, cost) in zip(replies, takes, strict=True)
        ]

    def _take_many(self, takes: list[tuple[str, float, int, int]], now: float) -> list[Any]:
        """The script for each take by its digest, in one pipeline: one round trip (a
        pipeline given the script object asks Redis whether it knows the script on every
        run, a round trip more)."""
        pipe = self._client.pipeline(transaction=False)
        for user, rate, burst, cost in takes:
            pipe.evalsha(
                self._script.sha, 1, f"{self._prefix}ratelimit:{user}", rate, burst, cost, now
            )
        replies: list[Any] = pipe.execute()
        return replies

    @staticmethod
    def _decision(allowed: bool, milli: int, rate_per_s: float, burst: int, cost: int) -> Decision:
        tokens = milli / 1000
        refill_s = (burst - tokens) / rate_per_s
        wait_s = 0.0 if allowed else (cost - tokens) / rate_per_s
        return Decision(allowed, burst, int(tokens), refill_s, wait_s)

    def _report(self, *, away: bool) -> None:
        """Log the start and the end of an outage, once each."""
        with self._lock:
            news, self._reported = self._reported != away, away
        if news and away:
            logger.warning(
                "the rate limit cannot reach Redis: submissions are %s until it answers",
                "let through unchecked" if self._fail_open else "refused",
                exc_info=True,
            )
        elif news:
            logger.info("the rate limit reaches Redis again")

    def _without_redis(self, burst: int, cost: int) -> Decision:
        if not self._fail_open:
            raise RateLimitUnavailable(
                "The rate limit cannot be checked right now; retry shortly.",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        metrics.RATE_LIMIT_UNCHECKED.inc(cost)  # a batch counts its jobs
        return Decision(True, burst, burst, 0.0, 0.0, checked=False)
