"""API keys authenticated a moment ago, answered from memory (bench/HISTORY.md).

Every request used to authenticate its key with a read of the key and its user, and
the commit that ends the read, on a worker thread of its own before the handler's:
about a seventh of the API's CPU per ``POST /v1/jobs``. An API key this process
authenticated in the last :attr:`AuthCache.ttl_s` seconds is answered here instead, on
the event loop, after one Redis ``GET`` of the *auth epoch*, a counter that every
revocation increments (:func:`bump_epoch`): an entry remembered under another epoch is
not used, so a revoked key is refused at once by every API process.

What changes outside the API (a user disabled or given another cap in SQL) shows
within the TTL. When Redis cannot be read, nothing is answered from memory: every
request reads the database, as without the cache. Only API keys are kept (JWTs are
verified every time), by the SHA-256 the database stores, never in clear.

The requests of one process share their epoch reads (:meth:`AuthCache.epoch`): a
request waits for the next ``GET`` sent after it arrived, one at a time per process, so
under load one read answers every request that arrived while the previous one was out
(each ``GET`` was 12% of the API's CPU per ``POST /v1/jobs``, bench/README.md). A read
sent after a request arrived sees every revocation that had returned by then, so "at
once" holds as it did with a read per request. A read that takes longer than
:data:`EPOCH_TIMEOUT_S` is given up (its requests read the database), as one that fails;
for :data:`SKIP_AFTER_FAILURE_S` after that, no read is sent (a silent Redis would
otherwise hold every request the whole timeout).
"""

import asyncio
import contextvars
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from errand_schema.auth import CallerLimits, Principal
from errand_schema.redis_guard import RedisAway

logger = logging.getLogger(__name__)

#: Most keys kept per process; past it the oldest entry is dropped.
MAX_ENTRIES = 10_000
#: Longest wait for an epoch read (s): every request of the process waits on the same
#: one, so a stuck read is given up and the requests read the database instead.
EPOCH_TIMEOUT_S = 0.5
#: After a read failed or was given up, how long requests read the database without
#: asking Redis first (s).
SKIP_AFTER_FAILURE_S = 2.0
#: How long a revocation's epoch bump keeps asking while the client's breaker is open
#: (its window, and a trial call's timeout, in the default settings).
BUMP_RETRY_S = 5.0


def epoch_key(prefix: str) -> str:
    """The Redis key of the auth epoch."""
    return f"{prefix}auth:epoch"


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    #: The user's limits, for the request's session (no read of the user's row).
    limits: CallerLimits
    epoch: bytes
    until: float


class AuthCache:
    """Recently authenticated API keys of this process, valid while the epoch holds."""

    def __init__(self, redis: Any, prefix: str, ttl_s: float) -> None:
        """``redis``: an asyncio Redis client."""
        self._redis = redis
        self._key = epoch_key(prefix)
        self.ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        # The shared reads (one event loop at a time: a test's app may outlive one).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: asyncio.Task[None] | None = None
        self._next: asyncio.Future[bytes | None] | None = None
        #: Until when no epoch is read (monotonic; after a failed read).
        self._skip_until = 0.0

    async def epoch(self) -> bytes | None:
        """The current auth epoch (``b"0"`` before any revocation); None when Redis
        cannot be read, which turns the cache off for this request.

        Read by a ``GET`` sent after this call began: the one about to be sent when a
        read is out (shared with every caller that came meanwhile), else a new one.
        """
        if time.monotonic() < self._skip_until:
            return None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._reading, self._next = loop, None, None
        if self._next is None:
            self._next = loop.create_future()
        waiting = self._next
        if self._reading is None:
            self._send()
        # Shielded: a caller that goes away must not cancel the others' answer.
        return await asyncio.shield(waiting)

    def _send(self) -> None:
        """Send the next read for the callers waiting on it."""
        waiting, self._next = self._next, None
        if waiting is not None and self._loop is not None:
            # A context of its own: a read serves many requests, and would otherwise
            # carry the first one's trace span and log context into every later read.
            self._reading = self._loop.create_task(
                self._read(waiting), context=contextvars.Context()
            )

    async def _read(self, waiting: asyncio.Future[bytes | None]) -> None:
        epoch = None
        failed = False
        try:
            value = await asyncio.wait_for(self._redis.get(self._key), EPOCH_TIMEOUT_S)
            epoch = value if value is not None else b"0"
        except asyncio.CancelledError:  # the loop is closing: nobody waits for an answer
            if self._reading is asyncio.current_task():
                self._answer_next(None)
            raise
        except Exception:  # a cache never fails a request: read the database instead
            logger.debug("auth epoch unreadable; authenticating from the database", exc_info=True)
            self._skip_until = time.monotonic() + SKIP_AFTER_FAILURE_S
            failed = True
        finally:
            current = self._reading is asyncio.current_task()  # not an old loop's read
            if current:
                self._reading = None
            if not waiting.done():
                waiting.set_result(epoch)
        if current and failed:
            self._answer_next(None)  # those that came meanwhile: no second wait
        elif current:
            self._send()  # the callers that came while this read was out

    def _answer_next(self, epoch: bytes | None) -> None:
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            waiting.set_result(epoch)

    def get(self, token: str, epoch: bytes) -> tuple[Principal, CallerLimits] | None:
        """The caller and its user's limits if ``token`` was authenticated under
        ``epoch`` less than the TTL ago."""
        digest = _digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.epoch != epoch or entry.until < time.monotonic():
            self._entries.pop(digest, None)
            return None
        return entry.principal, entry.limits

    def put(self, token: str, principal: Principal, limits: CallerLimits, epoch: bytes) -> None:
        """Remember that ``token`` is ``principal`` (read under ``epoch``: the epoch must
        have been read before the database, so a revocation in between is not missed)."""
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[_digest(token)] = _Entry(
            principal, limits, epoch, time.monotonic() + self.ttl_s
        )

    def clear(self) -> None:
        """Forget every key (this process)."""
        self._entries.clear()


def bump_epoch(redis: Any, prefix: str) -> None:
    """Invalidate every API process's cached keys (call after a revocation commits).

    Note:
        While Redis is unreachable the other processes cannot read the epoch either,
        and read the database; a bump lost to a passing failure leaves their entries of
        the revoked key valid for at most the TTL (logged here as a warning).
    """
    deadline = time.monotonic() + BUMP_RETRY_S
    while True:
        try:
            redis.incr(epoch_key(prefix))
            return
        except Exception as exc:  # the revocation stands in the database
            # RedisAway: the client's breaker skipped Redis after another call failed,
            # which says nothing about this one: a revocation waits for its turn to ask.
            if isinstance(exc, RedisAway) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            logger.warning("could not bump the auth epoch in Redis", exc_info=True)
            return


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
