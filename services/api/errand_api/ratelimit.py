"""Per-user submission rate limits: a token bucket in Redis, shared by every API replica.

One Lua script reads, refills and takes in a single atomic step on the server, so
replicas never race and a contended key costs one round trip, not a retry loop. (An
earlier ``WATCH``/``MULTI`` version retried under contention and let the request
through after its last retry; the benchmark showed both.) Dev mode's fakeredis runs
the same script through ``lupa``.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

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
        self._prefix = prefix
        self._script = client.register_script(_TAKE)

    def take(self, user: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens for ``user`` if there are enough (atomically)."""
        key = f"{self._prefix}ratelimit:{user}"
        allowed, milli = self._script(keys=[key], args=[rate_per_s, burst, cost, time.time()])
        tokens = int(milli) / 1000
        refill_s = (burst - tokens) / rate_per_s
        wait_s = 0.0 if allowed else (cost - tokens) / rate_per_s
        return Decision(bool(allowed), burst, int(tokens), refill_s, wait_s)
