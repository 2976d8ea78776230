"""How the no-op peers report progress: a counter and first/last timestamps in Redis.

One pipelined round trip per task; the harness reads the three keys to time the drain
(first task start to last task finish), as it reads ``started_at``/``finished_at`` of
Errand's jobs.
"""

import os
import threading
import time

import redis

#: The queue of both no-op peers (each on its own vhost).
QUEUE = "bench_noop"

_clients: dict[int, redis.Redis] = {}
_lock = threading.Lock()


def _client() -> redis.Redis:
    pid = os.getpid()  # one client per (forked) process, shared by its threads
    with _lock:
        if pid not in _clients:
            _clients[pid] = redis.Redis.from_url(os.environ["PEER_REDIS_URL"])
        return _clients[pid]


def mark() -> None:
    """Record that one task ran."""
    prefix, now = os.environ["PEER_REDIS_PREFIX"], time.time()
    pipe = _client().pipeline(transaction=False)
    pipe.set(f"{prefix}first", now, nx=True)
    pipe.incr(f"{prefix}count")
    pipe.set(f"{prefix}last", now)
    pipe.execute()


def read(client: redis.Redis, prefix: str) -> tuple[int, float | None, float | None]:
    """(count, first, last) as recorded by :func:`mark`."""
    count, first, last = client.mget(f"{prefix}count", f"{prefix}first", f"{prefix}last")
    return (
        int(count or 0),
        float(first) if first is not None else None,
        float(last) if last is not None else None,
    )
