"""The gates a step passes before it runs: pauses, concurrency slots, circuit breakers.

* **Pauses** live in PostgreSQL (``pauses``); each worker reads them at most once a
  second.
* **Concurrency slots** of a job type are members of a Redis sorted set scored by their
  lease expiry. A worker renews its slots while the step runs; one that dies stops
  renewing, and its slot is free again once the lease passes. So a crash cannot leak
  a slot for longer than ``lease_s``.
* **Circuit breakers** are Redis hashes shared by every worker: ``closed`` counts
  consecutive failures; ``open`` until the cool-down ends; then ``half_open`` lets one
  probe run (its own short lease), whose success closes the breaker and whose failure
  opens it again.

Every check is one Lua script, so replicas never race between read and write. These
are ours rather than a library's because they share the job row's lease semantics and
the breaker must be visible to the API and the dashboard under our key layout.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlmodel import Session

from errand_schema import flow
from errand_schema.breakers import breaker_redis_key

logger = logging.getLogger(__name__)

#: How long the paused set is cached per worker.
PAUSE_CACHE_S = 1.0

_ACQUIRE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) or
   redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - now) * 1000) + 60000)
  return {1, '0'}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(first[2]) - now)}
"""

_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

#: ARGV: now, probe lease (s). Returns {decision, wait_s}: closed | probe | open.
_CHECK = """
local now = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe_until')
if not st[1] or st[1] == 'closed' then return {'closed', '0'} end
if st[1] == 'open' then
  local untl = tonumber(st[2])
  if now < untl then return {'open', tostring(untl - now)} end
end
local probe_until = tonumber(st[3] or '0')
if st[1] == 'half_open' and now < probe_until then
  -- a probe runs: look again soon (its success closes the breaker at once)
  return {'open', tostring(math.min(probe_until - now, 1))}
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', tostring(now + tonumber(ARGV[2])))
return {'probe', '0'}
"""

#: ARGV: now, threshold, cool-down (s). Returns the state after the failure.
_FAIL = """
local now = tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', tostring(now + tonumber(ARGV[3])),
             'opened_at', tostring(now))
  redis.call('HINCRBY', KEYS[1], 'opened', 1)
  return 'open'
end
if state == 'closed' then redis.call('HSET', KEYS[1], 'state', 'closed') end
return state
"""


@dataclass(frozen=True)
class BreakerDecision:
    """``closed`` (run), ``probe`` (run as the one probe) or ``open`` (wait ``wait_s``)."""

    state: str
    wait_s: float = 0.0


class FlowGates:
    """Pauses, concurrency slots and breakers for one worker process."""

    def __init__(self, redis: Any, prefix: str, engine: Engine) -> None:
        self._prefix = prefix
        self._engine = engine
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._check = redis.register_script(_CHECK)
        self._fail = redis.register_script(_FAIL)
        self._paused: tuple[set[str], set[str]] = (set(), set())
        self._paused_read = -PAUSE_CACHE_S
        self._held: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    # -- pauses ---------------------------------------------------------------------

    def is_paused(self, session: Session | Connection, queue: str, job_type: str) -> bool:
        """Whether the queue or the job type is paused (cached for a second).

        Reads through the caller's session or connection: on SQLite a second
        connection would wait for the caller's own write lock.
        """
        if time.monotonic() - self._paused_read >= PAUSE_CACHE_S:
            self._paused = flow.paused(session)
            self._paused_read = time.monotonic()
        queues, types = self._paused
        return queue in queues or job_type in types

    def forget_pauses(self) -> None:
        """Read the pauses again at the next check."""
        self._paused_read = -PAUSE_CACHE_S

    # -- concurrency slots ----------------------------------------------------------

    def slot_key(self, job_type: str) -> str:
        """The sorted set holding the type's slots."""
        return f"{self._prefix}slots:{job_type}"

    def acquire_slot(self, job_type: str, limit: int, member: str, lease_s: float) -> float:
        """Take a slot; return 0 on success, else how long until one may free (s)."""
        now = time.time()
        key = self.slot_key(job_type)
        ok, wait = self._acquire(keys=[key], args=[now, now + lease_s, limit, member])
        if not ok:
            return max(0.05, float(wait))
        with self._lock:
            self._held[member] = (key, lease_s)
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="errand-slots", daemon=True
                )
                self._renewer.start()
        return 0.0

    def release_slot(self, member: str) -> None:
        """Give the slot back."""
        with self._lock:
            held = self._held.pop(member, None)
        if held is not None:
            self._redis.zrem(held[0], member)

    def _renew_loop(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                held = list(self._held.items())
            now = time.time()
            for member, (key, lease_s) in held:
                try:
                    self._renew(keys=[key], args=[now + lease_s, member])
                except Exception:  # Redis down: the slot expires; the step goes on
                    logger.warning("could not renew the concurrency slot of %s", member)

    def stop(self) -> None:
        """Stop renewing slots."""
        self._stop.set()

    # -- circuit breakers -----------------------------------------------------------

    def breaker_key(self, key: str) -> str:
        """The Redis hash of breaker ``key`` (``type:<name>`` or ``host:<host>``)."""
        return breaker_redis_key(self._prefix, key)

    def check_breaker(self, key: str, probe_lease_s: float) -> BreakerDecision:
        """May a job under this breaker run now?"""
        state, wait = self._check(keys=[self.breaker_key(key)], args=[time.time(), probe_lease_s])
        return BreakerDecision(_text(state), float(wait))

    def breaker_failed(self, key: str, threshold: int, cooldown_s: float) -> str:
        """Count a failed attempt; return the breaker's state after it."""
        state = self._fail(keys=[self.breaker_key(key)], args=[time.time(), threshold, cooldown_s])
        if _text(state) == "open":
            logger.warning("circuit breaker %s is open for %.0f s", key, cooldown_s)
        return _text(state)

    def breaker_succeeded(self, key: str) -> None:
        """A success closes the breaker and resets its count."""
        if self._redis.delete(self.breaker_key(key)):
            logger.info("circuit breaker %s closed", key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
