"""Scenario 4: latency at a steady 50 jobs/s of ``noop`` for ~20 s.

- submit → started: ``jobs.started_at - created_at`` (both written by the services);
- event → Socket.IO client: a python-socketio ``AsyncClient`` connected with the
  submitting user's key (so it is in ``user:<id>`` and gets every event of its jobs)
  compares each ``job_event``'s ``at`` with the time it receives it.
"""

import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

import socketio

from bench import dbq
from bench.infra import resources
from bench.load import LoadStats, auth, open_loop
from bench.procs import group
from bench.report import Result, summary_ms
from bench.system import settle, start_api, start_notifier, start_worker

#: Seconds of submissions at the scenario's rate before the measured ones (not counted).
WARMUP_S = 2.0


def _noop(_i: int) -> dict[str, Any]:
    return {"type": "noop", "payload": {}}


def event_delay_s(event: dict[str, Any], received: float) -> float:
    """Seconds from the event's ``at`` to ``received`` (epoch seconds)."""
    return received - datetime.fromisoformat(str(event["at"])).timestamp()


async def submit_and_watch(
    api_url: str, notifier_url: str, key: str, rate: float, seconds: float
) -> tuple[LoadStats, list[float], dict[str, int]]:
    """Submit at ``rate`` while one Socket.IO client records the delay of every event
    of the jobs submitted here (not of earlier ones whose events come late)."""
    seen: list[tuple[str, str, float]] = []  # (job id, type, delay)
    client = socketio.AsyncClient(reconnection=False)

    async def on_event(event: dict[str, Any]) -> None:
        seen.append((str(event["job_id"]), str(event["type"]), event_delay_s(event, time.time())))

    client.on("job_event", on_event)
    await client.connect(notifier_url, auth={"token": key}, transports=["websocket"])
    try:
        stats = await open_loop(
            f"{api_url}/v1/jobs",
            auth(key),
            _noop,
            rate=rate,
            duration_s=seconds,
        )
        # Let the last jobs finish and their events arrive.
        ids = {str(b["id"]) for b in stats.bodies}
        expected = stats.ok * 5
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(j in ids for j, _, _ in seen) < expected:
            await asyncio.sleep(0.2)
    finally:
        await client.disconnect()
    delays = [delay for j, _, delay in seen if j in ids]
    kinds = dict(Counter(kind for j, kind, _ in seen if j in ids))
    return stats, delays, kinds


def run(quick: bool = False) -> list[Result]:
    """Run the scenario (``quick``: 5 s)."""
    rate, seconds = 50.0, (5.0 if quick else 20.0)
    result = Result(
        "latency", params={"rate": rate, "seconds": seconds, "warmup_s": WARMUP_S, "workers": "2x8"}
    )
    with resources("latency") as res, group() as g:
        _, key = res.make_user("bench")
        _, api_url = start_api(res, g)
        _, notifier_url = start_notifier(res, g)
        start_worker(res, g)
        settle()
        # Steady state: the first jobs of fresh processes (their connections, first
        # statements, lazy imports) are not counted, as the enqueue scenario's warm-up.
        warm = asyncio.run(
            open_loop(f"{api_url}/v1/jobs", auth(key), _noop, rate=rate, duration_s=WARMUP_S)
        )
        warm_ids = [str(b["id"]) for b in warm.bodies]
        warmed = dbq.wait_final(res, warm.ok, 30)
        stats, delays, kinds = asyncio.run(
            submit_and_watch(api_url, notifier_url, key, rate, seconds)
        )
        ids = [str(b["id"]) for b in stats.bodies]
        dbq.wait_final(res, warm.ok + len(ids), 60)
        started = dbq.submit_to_start(res, ids)
        lost = dbq.not_completed(res, warm_ids + ids)
        twice = dbq.completed_twice(res)
    s2s, ev = summary_ms(started), summary_ms(delays)
    result.row("submit -> started", **s2s)
    result.row("event -> socket.io client", **ev)
    result.row("POST /v1/jobs at 50/s", **summary_ms(stats.latencies_s))
    result.target("submit->started p99 at 50 jobs/s", s2s["p99_ms"], "<=", 20, unit="ms")
    result.zero("latency: submit errors", stats.errors + warm.errors)
    result.zero("latency lost", lost)
    result.zero("latency completed twice", twice)
    expected = stats.ok * 5
    result.zero("latency: events not received", max(0, expected - len(delays)))
    result.notes.append(f"events received by type: {kinds} (expected 5 per job)")
    if not warmed:
        result.notes.append("the warm-up's jobs had not all finished within 30 s")
    result.notes.append(
        "event -> client p99 at 50 jobs/s (5 events per job, one client) is reported here; "
        "the 5,000-client target is in the notifier scenario"
    )
    return [result]
