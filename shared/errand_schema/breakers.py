"""Where circuit breakers live in Redis, and how the API and dashboards read them.

Workers write them (``errand_worker.gates``); every reader goes through here so the
key layout has one owner. A breaker is the hash ``{prefix}breaker:{key}`` where
``key`` is ``type:<job type>`` or ``host:<host>``.
"""

import time
from typing import Any

from pydantic import BaseModel


class BreakerState(BaseModel):
    """One circuit breaker as operators see it."""

    key: str
    state: str
    failures: int
    #: Unix time the breaker last opened, and until when it stays open.
    opened_at: float | None = None
    open_until: float | None = None
    #: Seconds left until a probe may run (0 when closed or due).
    retry_in_s: float = 0.0
    #: How many times it opened since it was last closed by a success.
    times_opened: int = 0


def breaker_redis_key(prefix: str, key: str) -> str:
    """The Redis hash of breaker ``key``."""
    return f"{prefix}breaker:{key}"


def list_breakers(redis: Any, prefix: str, limit: int = 1000) -> list[BreakerState]:
    """Return every breaker that is not plainly closed, sorted by key."""
    out: list[BreakerState] = []
    now = time.time()
    head = f"{prefix}breaker:"
    for raw in redis.scan_iter(match=f"{head}*", count=500):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in redis.hgetall(name).items()
        }
        if not fields:
            continue
        until = float(fields["until"]) if "until" in fields else None
        state = fields.get("state", "closed")
        out.append(
            BreakerState(
                key=name[len(head) :],
                state=state,
                failures=int(fields.get("failures", 0)),
                opened_at=float(fields["opened_at"]) if "opened_at" in fields else None,
                open_until=until,
                retry_in_s=round(max(0.0, until - now), 3) if until and state == "open" else 0.0,
                times_opened=int(fields.get("opened", 0)),
            )
        )
        if len(out) >= limit:
            break
    return sorted(out, key=lambda b: b.key)


def reset_breaker(redis: Any, prefix: str, key: str) -> bool:
    """Close a breaker by hand; return whether it existed."""
    return bool(redis.delete(breaker_redis_key(prefix, key)))
