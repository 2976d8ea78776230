"""A Redis client that leaves a failing Redis alone for a moment (a circuit breaker).

Redis carries events, rate limits and caches, never a job's state, so a request goes on
without it (each caller has its fallback). But a Redis that has stopped answering
costs every call the client's whole timeout, several times per request (the rate
limit, the event append, the estimate; the auth epoch has its own): with plain clients
a ``POST /v1/jobs`` took 2 s with a 0.5 s timeout while Redis was silent. After a
failure (see :class:`_Guarded` for which), the client made here fails every call at
once with :class:`RedisAway` for ``open_s`` seconds, then lets one call through as a
trial while the others still fail at once: one call per window waits, the rest do not,
however many threads call. One warning per outage (when it first fails after
having answered).

redis-py has retries but no breaker, so the breaker sits in the connection class the
pool makes its connections from (``connect_check_health``, ``send_packed_command``,
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
    """Closed while Redis answers. After a failure, open for ``open_s``; then one call
    goes to Redis as a trial while the others still fail at once (the window moves on
    while it runs); its answer closes the breaker, its failure opens a new window."""

    def __init__(self, open_s: float = OPEN_S) -> None:
        self.open_s = open_s
        self._lock = threading.Lock()
        #: Until when calls fail at once (monotonic; 0 while closed).
        self._until = 0.0
        #: Whether Redis failed and has not answered since.
        self._failing = False
        #: The connection let through after a window, until it answers or fails.
        self._trial: object | None = None
        #: Calls failed without asking Redis.
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        """Whether a call would fail at once now."""
        return time.monotonic() < self._until

    def check(self, caller: object) -> None:
        """Let ``caller`` (a connection) go to Redis, or raise :class:`RedisAway`: while
        the window is open, and, once it has passed, for every caller but the one let
        through as the trial (which may check again: it connects, then sends).

        Raises:
            RedisAway: Redis failed less than ``open_s`` ago, or a trial is out.
        """
        if not self._failing:  # the usual case, read without the lock
            return
        with self._lock:
            if not self._failing or caller is self._trial:
                return
            now = time.monotonic()
            if now < self._until:
                self.skipped += 1
                raise RedisAway(f"Redis failed less than {self.open_s:g} s ago; not asked")
            # This caller is the trial: the others wait for its outcome, not for Redis.
            self._trial = caller
            self._until = now + self.open_s

    def failed(self, exc: BaseException) -> None:
        """Open the breaker after a connection error or a timeout."""
        with self._lock:
            self._until = time.monotonic() + self.open_s
            news, self._failing, self._trial = not self._failing, True, None
        if news:
            logger.warning(
                "Redis failed (%s): calls skip it for %g s at a time until it answers",
                exc,
                self.open_s,
            )

    def answered(self) -> None:
        """Close the breaker: Redis answered."""
        if not self._failing:  # the usual case, read without the lock
            return
        with self._lock:
            news, self._failing, self._until, self._trial = self._failing, False, 0.0, None
        if news:
            logger.info("Redis answers again")

    def expire(self) -> None:
        """End the current window now: the next call is a trial (tests use it)."""
        with self._lock:
            self._until, self._trial = 0.0, None


class _Guarded:
    """Mixed in before a redis-py connection class; ``breaker`` set per pool.

    What opens the breaker: a connection that cannot be made (refused, timed out), and a
    command that timed out. Not an error on a connection already made (closed by Redis
    while idle, say after a restart): the client connects again for the next command,
    and that says whether Redis is away. ``connect_check_health`` is where redis-py
    connects, from ``connect`` and from ``send_packed_command`` alike.
    """

    breaker: Breaker

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_sock", None) is None:
            self.breaker.check(self)
        try:
            return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._failed(exc)
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.check(self)
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
