"""Scenario 8 (on demand, ``make soak``): a long run at 100 jobs/s of mixed jobs.

The mix: plain ``noop``; two-step pipelines with progress ticks; pipelines whose step
fails once (retried with the type's backoff); pipelines that fail every attempt (dead,
to the DLQ); slow pipelines cancelled 0.3 s after submission. Every ``interval`` the
soak samples RSS of each service, the database size, the queue depth (ready messages in
RabbitMQ and unfinished jobs in PostgreSQL) and the p99 of submit→started and of
``POST /v1/jobs`` in that window. At the end submission stops, the backlog drains, and
unfinished jobs and steps completed twice are counted.
"""

import asyncio
import random
import time
from typing import Any

import aiohttp
import pika

from bench import dbq
from bench.infra import Resources, resources
from bench.load import auth
from bench.procs import Proc, group
from bench.report import Result, pct
from bench.system import settle, start_api, start_notifier, start_worker

#: Requests in flight at most; past it a submission is skipped (counted as shed).
MAX_OUTSTANDING = 200
#: (kind, weight): the share of each kind of job in the mix.
MIX = [("noop", 50), ("pipeline", 30), ("retry", 12), ("dead", 3), ("cancel", 5)]


def job_body(kind: str, rng: random.Random) -> dict[str, Any]:
    """The submission of one job of ``kind``."""
    if kind == "noop":
        return {"type": "noop", "payload": {}}
    fail = {"retry": 1, "dead": 10}.get(kind, 0)
    duration = 2.0 if kind == "cancel" else rng.choice([0.0, 0.01, 0.05])
    steps = [
        {"name": "a", "duration_s": duration, "ticks": rng.choice([0, 2])},
        {"name": "b", "duration_s": 0, "ticks": 0, "fail_attempts": fail},
    ]
    return {"type": "demo.pipeline", "payload": {"steps": steps}}


class Soak:
    """The load loop, its samples and what it submitted."""

    def __init__(self, url: str, key: str, rate: float, seed: int = 7) -> None:
        self.url, self.headers, self.rate = url, auth(key), rate
        self.rng = random.Random(seed)
        self.kinds = [k for k, w in MIX for _ in range(w)]
        self.accepted: list[str] = []
        self.errors = 0
        #: Submissions skipped because MAX_OUTSTANDING requests were already waiting:
        #: the API was not keeping up, and the soak must end on time.
        self.shed = 0
        self.post_latencies: list[float] = []

    async def one(self, http: aiohttp.ClientSession, kind: str) -> None:
        """Submit one job (and cancel it shortly after, for the cancel kind)."""
        started = time.perf_counter()
        body = job_body(kind, self.rng)
        try:
            async with http.post(f"{self.url}/v1/jobs", json=body, headers=self.headers) as r:
                data = await r.json()
                if r.status != 202:
                    self.errors += 1
                    return
            self.post_latencies.append(time.perf_counter() - started)
            self.accepted.append(str(data["id"]))
            if kind == "cancel":
                await asyncio.sleep(0.3)
                async with http.post(
                    f"{self.url}/v1/jobs/{data['id']}/cancel", headers=self.headers
                ):
                    pass
        except (aiohttp.ClientError, TimeoutError):
            self.errors += 1

    async def submit_for(self, seconds: float) -> None:
        """Submit at the steady rate for ``seconds``."""
        pending: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as http:
            t0 = time.perf_counter()
            for i in range(round(self.rate * seconds)):
                delay = t0 + i / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= MAX_OUTSTANDING:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self.one(http, self.rng.choice(self.kinds)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)


def queue_depth(res: Resources) -> int:
    """Ready messages in the ``default`` queue of the scenario's vhost."""
    params = pika.URLParameters(res.amqp_url())
    conn = pika.BlockingConnection(params)
    try:
        frame = conn.channel().queue_declare("default", passive=True)
        return int(frame.method.message_count)
    finally:
        conn.close()


def sample(res: Resources, procs: dict[str, Proc], soak: Soak, since: float) -> dict[str, Any]:
    """One row of measurements; windows start at ``since`` (epoch seconds)."""
    starts = res.sql(
        "SELECT extract(epoch FROM (started_at - created_at))::float8 FROM jobs"
        " WHERE started_at >= to_timestamp(%s)",
        since,
    )
    db_mb = res.sql("SELECT pg_database_size(current_database())")[0][0]
    unfinished = res.sql("SELECT count(*) FROM jobs WHERE status <> ALL(%s)", list(dbq.FINAL))
    posts, soak.post_latencies = soak.post_latencies, []
    mem = {name: proc.memory() for name, proc in procs.items()}
    return {
        "api_mb": mem["api"]["max_rss"],
        "worker_pss_mb": mem["worker"]["total_pss"],
        "notifier_mb": mem["notifier"]["max_rss"],
        "db_mb": round(int(str(db_mb)) / 1024 / 1024, 1),
        "queue_ready": queue_depth(res),
        "unfinished": int(str(unfinished[0][0])),
        "accepted": len(soak.accepted),
        "shed": soak.shed,
        "p99_start_ms": round(pct([float(str(r[0])) for r in starts], 99) * 1000, 1),
        "p99_post_ms": round(pct(posts, 99) * 1000, 1),
    }


#: Seconds between the soak's own VACUUM ANALYZE when the server's autovacuum is off
#: (its ``autovacuum_naptime``, 1 min by default, is how often autovacuum looks).
VACUUM_EVERY_S = 60.0
#: The tables that change with every job.
CHURNING = ("jobs", "job_steps", "job_attempts", "job_events")


def autovacuum_off(res: Resources) -> bool:
    """Whether the server runs without autovacuum (a server-wide setting, left alone)."""
    return str(res.sql("SHOW autovacuum")[0][0]) != "on"


def vacuum(res: Resources) -> None:
    """What autovacuum would do for the churning tables: ``VACUUM (ANALYZE)``."""
    res.sql(f"VACUUM (ANALYZE) {', '.join(CHURNING)}")


async def soak_loop(
    res: Resources,
    procs: dict[str, Proc],
    soak: Soak,
    seconds: float,
    interval: float,
    *,
    maintain: bool = False,
) -> list[dict[str, Any]]:
    """Submit for ``seconds`` while sampling every ``interval``; with ``maintain``,
    vacuum and analyze the churning tables every :data:`VACUUM_EVERY_S`."""
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    load = asyncio.create_task(soak.submit_for(seconds))
    since = vacuumed = t0
    while not load.done():
        await asyncio.wait({load}, timeout=interval)
        now = time.time()
        row = await asyncio.to_thread(sample, res, procs, soak, since)
        rows.append({"t_s": str(round(now - t0)), **row})
        since = now
        if maintain and now - vacuumed >= VACUUM_EVERY_S:
            await asyncio.to_thread(vacuum, res)
            vacuumed = time.time()
    await load
    return rows


def run(quick: bool = False, minutes: float = 30.0, rate: float = 100.0) -> list[Result]:
    """Run the soak for ``minutes`` at ``rate`` jobs/s (``quick``: 2 minutes)."""
    minutes = 2.0 if quick else minutes
    interval = 10.0 if minutes <= 5 else 30.0
    result = Result("soak", params={"minutes": minutes, "rate": rate, "mix": dict(MIX)})
    with resources("soak") as res, group() as g:
        _, key = res.make_user("bench")
        api, api_url = start_api(res, g)
        notifier, _ = start_notifier(res, g)
        worker = start_worker(res, g)
        procs = {"api": api, "worker": worker, "notifier": notifier}
        settle()
        soak = Soak(api_url, key, rate)
        # A server with autovacuum off (this machine's) would measure the tables'
        # bloat and stale statistics, not Errand: the soak does autovacuum's part.
        maintain = autovacuum_off(res)
        rows = asyncio.run(soak_loop(res, procs, soak, minutes * 60, interval, maintain=maintain))
        drained = dbq.wait_final(res, len(soak.accepted), 600, stall_s=60)
        rows.append({"t_s": "drained", **sample(res, procs, soak, time.time())})
        stuck = dbq.not_final(res, soak.accepted)
        twice = dbq.completed_twice(res)
        outcomes = {
            str(s): int(str(c))
            for s, c in res.sql("SELECT status, count(*) FROM jobs GROUP BY status")
        }
    for row in rows:
        result.row(f"t={row.pop('t_s')}", **row)
    first, last = rows[0], rows[-2] if len(rows) > 1 else rows[-1]
    result.notes.append(
        "growth first->last sample: "
        + ", ".join(
            f"{k} {first[k]} -> {last[k]}"
            for k in (
                "api_mb",
                "worker_pss_mb",
                "notifier_mb",
                "db_mb",
                "unfinished",
                "p99_start_ms",
            )
        )
    )
    if maintain:
        result.notes.append(
            f"the server's autovacuum is off: the soak ran VACUUM (ANALYZE) on "
            f"{', '.join(CHURNING)} every {VACUUM_EVERY_S:.0f} s in its place"
        )
    result.notes.append(
        f"final statuses: {outcomes}; submit errors {soak.errors}; drained: {drained}; "
        f"{len(soak.accepted)} accepted of {round(rate * minutes * 60)} offered; "
        f"{soak.shed} shed (already {MAX_OUTSTANDING} requests waiting)"
    )
    result.notes.append(
        "p99_start_ms: submit->started of the jobs that started in the window (queueing "
        "delay included); p99_post_ms: POST /v1/jobs answered in the window"
    )
    result.zero("soak: accepted jobs never finished", stuck)
    result.zero("soak: steps completed twice", twice)
    return [result]
