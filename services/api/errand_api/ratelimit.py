"""Per-user submission rate limits: a token bucket in Redis, shared by every API replica.

Optimistic transactions (``WATCH``/``MULTI``) keep each take atomic across replicas
without a server-side script, so the same code runs on Redis and on dev mode's
in-process stand-in.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import redis

#: Attempts at an optimistic take before giving up (and allowing the request).
MAX_TRIES = 8


@dataclass(frozen=True)
class Decision:
    """The outcome of one take, with what the ``RateLimit-*`` headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused)."""
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

    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def take(self, user: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens for ``user`` if there are enough."""
        key = f"{self._prefix}ratelimit:{user}"
        for _ in range(MAX_TRIES):
            try:
                return self._try_take(key, rate_per_s, burst, cost)
            except redis.WatchError:
                continue
        return Decision(True, burst, 0, 0.0, 0.0)

    def _try_take(self, key: str, rate: float, burst: int, cost: int) -> Decision:
        with self._redis.pipeline() as pipe:
            pipe.watch(key)
            state = pipe.hgetall(key)
            now = time.time()
            tokens = float(state.get(b"tokens", burst)) if state else float(burst)
            stamp = float(state.get(b"ts", now)) if state else now
            tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            pipe.multi()
            pipe.hset(key, mapping={"tokens": tokens, "ts": now})
            pipe.expire(key, max(1, math.ceil(burst / rate) + 1))
            pipe.execute()
        refill_s = (burst - tokens) / rate
        wait_s = 0.0 if allowed else (cost - tokens) / rate
        return Decision(allowed, burst, int(tokens), refill_s, wait_s)
