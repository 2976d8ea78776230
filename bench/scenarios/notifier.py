"""Scenario 5: the notifier with 1,000 / 5,000 / 10,000 Socket.IO clients, and fan-out.

Each client is its own user, connected over the websocket transport and subscribed to
its own job. Events are appended to the Redis stream at 200/s (round-robin over the
connected clients' jobs) in the worker's format; each must reach exactly one client.
Levels are reached by adding clients, so 5,000 includes the first 1,000. Then 2,000
clients connect with the admin key (room ``admin``) and single events, spaced out, are
fanned out to all of them.
"""

import asyncio
import gc
import json
import sys
import time
from typing import Any

from bench.infra import ADMIN_KEY, resources
from bench.population import EventSource, Member, populate
from bench.procs import Proc, group, raise_fd_limit
from bench.report import Result, pct, summary_ms
from bench.sio_raw import RawSocketIO, Receipts, parse_event, session
from bench.system import start_notifier

CONNECT_CONCURRENCY = 100


async def connect_many(
    http: Any, url: str, tokens: list[str], sink: Receipts, jobs: list[str] | None
) -> list[RawSocketIO]:
    """Connect one client per token (and subscribe each to its job, when given)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> RawSocketIO:
        async with gate:
            client = RawSocketIO(http, url, tokens[i], sink)
            await client.connect()
            if jobs is not None:
                ack = await client.emit_with_ack("subscribe", {"job_id": jobs[i]})
                if not (isinstance(ack, dict) and ack.get("ok")):
                    raise RuntimeError(f"subscribe refused: {ack}")
            return client

    clients = list(await asyncio.gather(*(one(i) for i in range(len(tokens)))))
    # The load generator is Python too: its own full collections, walking thousands of
    # connections, would show as delivery delays. Its connections live to the end.
    gc.collect()
    gc.freeze()
    return clients


def delivery(sink: Receipts, sent: dict[str, float], label: str) -> tuple[list[float], int]:
    """Delays (s) of the receipts of events tagged ``label-*``, and their count."""
    delays: list[float] = []
    for received, raw in sink:
        if f'"{label}-' not in raw:
            continue
        event = parse_event(raw)
        tag = str(event.get("message"))
        if tag in sent:
            delays.append(received - sent[tag])
    return delays, len(delays)


async def user_levels(
    url: str,
    members: list[Member],
    levels: list[int],
    seconds: float,
    notifier: Proc,
    source: EventSource,
) -> list[dict[str, Any]]:
    """Ramp the subscribed clients through ``levels``; 200 events/s at each."""
    rows: list[dict[str, Any]] = []
    sink: Receipts = []
    clients: list[RawSocketIO] = []
    async with session() as http:
        for level in levels:
            t0 = time.perf_counter()
            new = members[len(clients) : level]
            clients += await connect_many(
                http, url, [m.key for m in new], sink, [str(m.job_id) for m in new]
            )
            connect_s = time.perf_counter() - t0
            print(f"  {level} clients connected in {connect_s:.0f} s", file=sys.stderr)
            rss_before = notifier.memory()["max_rss"]
            label = f"L{level}"
            thread = source.in_thread(members[:level], 200.0, seconds, label)
            while thread.is_alive():
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            sent = {k: v for k, v in source.sent.items() if k.startswith(f"{label}-")}
            delays, got = delivery(sink, sent, label)
            sink.clear()
            lat = summary_ms(delays)
            rows.append(
                {
                    "clients": level,
                    "connect_s": round(connect_s, 1),
                    "events": len(sent),
                    "delivered": got,
                    "ratio": round(got / len(sent), 4) if sent else 0.0,
                    "p50_ms": lat["p50_ms"],
                    "p99_ms": lat["p99_ms"],
                    "max_ms": lat["max_ms"],
                    "rss_mb": max(rss_before, notifier.memory()["max_rss"]),
                    "dropped": sum(1 for c in clients if c.dropped),
                }
            )
        await asyncio.gather(*(c.close() for c in clients))
    return rows


async def admin_fanout(
    url: str, member: Member, n_clients: int, events: int, source: EventSource
) -> dict[str, Any]:
    """``n_clients`` admins; ``events`` single events 0.5 s apart; every delivery's delay."""
    sink: Receipts = []
    async with session() as http:
        clients = await connect_many(http, url, [ADMIN_KEY] * n_clients, sink, None)
        await asyncio.sleep(1.0)
        for i in range(events):
            await asyncio.to_thread(source.one, member, f"A-{i}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)
        await asyncio.gather(*(c.close() for c in clients))
    sent = {k: v for k, v in source.sent.items() if k.startswith("A-")}
    delays, got = delivery(sink, sent, "A")
    per_event: dict[str, float] = {}
    for received, raw in sink:
        tag = str(json.loads(raw[2:])[1].get("message"))
        if tag in sent:
            per_event[tag] = max(per_event.get(tag, 0.0), received - sent[tag])
    lat = summary_ms(delays)
    return {
        "clients": n_clients,
        "events": events,
        "delivered": got,
        "ratio": round(got / (events * n_clients), 4),
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "last_client_p99_ms": round(pct(list(per_event.values()), 99) * 1000, 2),
    }


def run(quick: bool = False, suite: bool = False) -> list[Result]:
    """Run the scenario (``quick``: 100 / 500 clients, 200 admins, 3 s per level).

    In the whole suite (``suite``: ``make bench``), the ramp stops at 5,000 clients with
    6 s of events per level: connecting 10,000 clients takes the notifier about three
    minutes on two cores, which ``make bench``'s 15 minutes cannot hold
    (``make bench-notifier`` runs all three levels).
    """
    if quick:
        levels, admins, seconds = [100, 500], 200, 3.0
    elif suite:
        levels, admins, seconds = [1000, 5000], 2000, 6.0
    else:
        levels, admins, seconds = [1000, 5000, 10000], 2000, 10.0
    fd_limit = raise_fd_limit()
    result = Result(
        "notifier",
        params={"levels": levels, "events_per_s": 200, "seconds": seconds, "admins": admins},
    )
    needed = max(levels) + admins + 500
    if fd_limit < needed:
        levels = [lv for lv in levels if lv + 500 <= fd_limit]
        result.notes.append(f"file-descriptor limit {fd_limit}: levels capped to {levels}")
    if suite and not quick:
        result.notes.append(
            "make bench: levels 1,000 and 5,000 only (time budget); make bench-notifier adds 10,000"
        )
    with resources("notifier") as res, group() as g:
        members = populate(res, max(levels))
        notifier, url = start_notifier(res, g)
        source = EventSource(res)
        try:
            idle = notifier.memory()["max_rss"]
            fan = asyncio.run(admin_fanout(url, members[0], admins, 20, source))
            rows = asyncio.run(user_levels(url, members, levels, seconds, notifier, source))
        finally:
            source.close()
    result.row("idle", clients=0, rss_mb=idle)
    for row in rows:
        result.row(f"{row['clients']} subscribed", **row)
    result.row(f"{admins} in admin room", **fan)
    at5k = next((r for r in rows if r["clients"] == 5000), rows[-1])
    result.target(
        f"event->client p99 at {at5k['clients']} clients", at5k["p99_ms"], "<=", 25, unit="ms"
    )
    result.target(
        f"notifier RSS at {at5k['clients']} clients", at5k["rss_mb"], "<=", 300, unit="MB"
    )
    result.target(f"admin room fan-out p99 ({admins})", fan["p99_ms"], "<=", 100, unit="ms")
    for row in rows:
        result.zero(
            f"events not delivered at {row['clients']} clients", row["events"] - row["delivered"]
        )
    result.zero("admin fan-out deliveries missing", fan["events"] * admins - fan["delivered"])
    result.notes.append(
        "Delay = receive time in the client process - time the event was appended; the "
        "client process (all connections, one event loop) shares the 2 cores with the notifier."
    )
    return [result]
