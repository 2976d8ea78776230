"""An asyncio HTTP load generator (aiohttp): closed loop, open loop at a rate, bulk submit."""

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

Body = Callable[[int], dict[str, Any]]


@dataclass
class LoadStats:
    """What a load run saw."""

    latencies_s: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    #: Response bodies (JSON) of successful requests, when asked to keep them.
    bodies: list[dict[str, Any]] = field(default_factory=list)
    #: Send time (epoch seconds) of each kept body, same order.
    sent_at: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    def merge(self, other: "LoadStats") -> None:
        """Add another run's numbers to this one."""
        self.latencies_s += other.latencies_s
        self.ok += other.ok
        self.errors += other.errors
        self.error_kinds.update(other.error_kinds)
        self.duration_s += other.duration_s
        self.bodies += other.bodies
        self.sent_at += other.sent_at


@contextlib.contextmanager
def _collector_out_of_the_way() -> Iterator[None]:
    """The load generator's own full collections kept out of the latencies it measures.

    It is Python too, on the same cores: a full collection walks every object it holds
    (aiohttp, the bench's modules, the answers kept) and pauses every request in flight
    at once. Timed with ``gc.callbacks`` during the enqueue scenario (2026-11-25): its
    full collections took 46-84 ms, and each matched a pause seen by all 50 requests in
    flight. What exists before the round is frozen (out of the collector's sight, as the
    API and the notifier scenario's clients do); what the round makes is collected as
    usual, so nothing accumulates. Not for two rounds at once in one process: the first
    to end would unfreeze the other's objects. A freeze made before (the notifier
    scenario's clients) is left in place.
    """
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def _one(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    stats: LoadStats,
    keep: bool,
    record: bool = True,
) -> None:
    sent, started = time.time(), time.perf_counter()
    try:
        async with http.post(url, json=body, headers=headers) as resp:
            data = await resp.read()
            elapsed = time.perf_counter() - started
            if 200 <= resp.status < 300:
                if record:
                    stats.ok += 1
                    stats.latencies_s.append(elapsed)
                    if keep:
                        import json

                        stats.bodies.append(json.loads(data))
                        stats.sent_at.append(sent)
                return
            kind = f"http {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        kind = type(exc).__name__
    if record:
        stats.errors += 1
        stats.error_kinds[kind] += 1


async def closed_loop(
    url: str,
    headers: dict[str, str],
    body: Body,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    keep: bool = False,
) -> LoadStats:
    """``concurrency`` workers POST back to back for ``warmup_s + duration_s``.

    Requests that start during the warm-up are not counted. The generator's own
    collector is kept out of the way during the round (:func:`_collector_out_of_the_way`).
    """
    stats = LoadStats()
    counter = iter(range(10**9))
    with _collector_out_of_the_way():
        async with _session(concurrency) as http:
            t0 = time.perf_counter()
            measure_from = t0 + warmup_s
            end = measure_from + duration_s

            async def worker() -> None:
                while (now := time.perf_counter()) < end:
                    record = now >= measure_from
                    await _one(http, url, headers, body(next(counter)), stats, keep, record)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            stats.duration_s = time.perf_counter() - measure_from
    return stats


async def open_loop(
    url: str,
    headers: dict[str, str],
    body: Body,
    *,
    rate: float,
    duration_s: float,
    keep: bool = True,
    max_outstanding: int = 500,
) -> LoadStats:
    """POST at a steady ``rate`` per second for ``duration_s``, whatever the latency.

    Each request is sent at its scheduled time (not after the previous one answers), so
    a slow server shows up as latency rather than as a lower offered rate. The
    generator's own collector is kept out of the way during the round
    (:func:`_collector_out_of_the_way`).
    """
    stats = LoadStats()
    count = round(rate * duration_s)
    pending: set[asyncio.Task[None]] = set()
    with _collector_out_of_the_way():
        async with _session(max_outstanding) as http:
            t0 = time.perf_counter()
            for i in range(count):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(_one(http, url, headers, body(i), stats, keep))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            stats.duration_s = time.perf_counter() - t0
    return stats


async def submit_all(
    url: str, headers: dict[str, str], bodies: list[dict[str, Any]], *, concurrency: int
) -> LoadStats:
    """POST every body once with ``concurrency`` requests in flight; keep the answers."""
    stats = LoadStats()
    queue = iter(bodies)
    async with _session(concurrency) as http:
        t0 = time.perf_counter()

        async def worker() -> None:
            for body in queue:
                await _one(http, url, headers, body, stats, True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats.duration_s = time.perf_counter() - t0
    return stats


def auth(key: str) -> dict[str, str]:
    """The Authorization header of an API key."""
    return {"Authorization": f"Bearer {key}"}
