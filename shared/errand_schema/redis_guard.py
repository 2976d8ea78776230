"""A Redis client that leaves a failing Redis alone for a moment (a circuit breaker).

Redis carries events, rate limits and caches, never a job's state, so a request goes on
without it (each caller has its fallback). But a Redis that has stopped answering
costs every call the client's whole timeout, several times per request (the rate
limit, the event append, the estimate; the auth epoch has its own): with plain clients
a ``POST /v1/jobs`` took 2 s with a 0.5 s timeout while Redis was silent. After a
failure (see :class:`_Guarded` for which), the client made here fails every call at
once with :class:`RedisAway` for ``open_s`` seconds, then asks Redis again: one call
per window waits, the rest do not. One warning per outage (when it first fails after
having answered).

redis-py has retries but no breaker, so the breaker sits in the connection class the
pool makes its connections from (``connect``, ``send_packed_command``,
``read_response``): every command of every client on the pool goes through it,
including a single-connection client made from the pool (the event publisher's).
"""

import logging
import threading
import time
from typing import Any

from redis import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

#: How long calls skip Redis after it failed (s).
OPEN_S = 2.0


class RedisAway(RedisConnectionError):
    """Raised without asking Redis: it failed less than the breaker's window ago."""


class Breaker:
    """Open for ``open_s`` after each failure; closed again once that has passed."""

    def __init__(self, open_s: float = OPEN_S) -> None:
        self.open_s = open_s
        self._until = 0.0
        self._lock = threading.Lock()
        #: Whether Redis answered since the last failure (the next failure is news).
        self._answered = True
        #: Calls failed without asking Redis (for tests and logs).
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        """Whether calls skip Redis now."""
        return time.monotonic() < self._until

    def check(self) -> None:
        """Raise :class:`RedisAway` while open.

        Raises:
            RedisAway: Redis failed less than ``open_s`` ago.
        """
        if time.monotonic() < self._until:
            self.skipped += 1
            raise RedisAway(f"Redis failed less than {self.open_s:g} s ago; not asked")

    def failed(self, exc: BaseException) -> None:
        """Open the breaker after a connection error or a timeout."""
        with self._lock:
            self._until = time.monotonic() + self.open_s
            news, self._answered = self._answered, False
        if news:
            logger.warning(
                "Redis failed (%s): calls skip it for %g s at a time until it answers",
                exc,
                self.open_s,
            )

    def answered(self) -> None:
        """Note that Redis answered (a later failure is logged again)."""
        if not self._answered:
            with self._lock:
                news, self._answered = not self._answered, True
            if news:
                logger.info("Redis answers again")


class _Guarded:
    """Mixed in before a redis-py connection class; ``breaker`` set per pool.

    What opens the breaker: a connection that cannot be made (refused, timed out), and a
    command that timed out. Not an error on a connection already made (closed by Redis
    while idle, say after a restart): the client connects again for the next command,
    and that says whether Redis is away.
    """

    breaker: Breaker

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.check()
        try:
            return super().connect(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._failed(exc)
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.check()
        try:
            return super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        except RedisTimeoutError as exc:
            self._failed(exc)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except RedisTimeoutError as exc:
            self._failed(exc)
            raise
        self.breaker.answered()
        return response

    def _failed(self, exc: BaseException) -> None:
        if not isinstance(exc, RedisAway):  # a skipped call does not extend the window
            self.breaker.failed(exc)


def guarded_redis(url: str, *, timeout_s: float, open_s: float = OPEN_S) -> tuple[Redis, Breaker]:
    """A client of ``url`` whose commands give up after ``timeout_s`` and skip Redis for
    ``open_s`` after each failure; and its breaker."""
    pool = ConnectionPool.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    breaker = Breaker(open_s)
    base = pool.connection_class
    pool.connection_class = type(f"Guarded{base.__name__}", (_Guarded, base), {"breaker": breaker})
    return Redis(connection_pool=pool), breaker
