"""Scenario 1: ``POST /v1/jobs`` on one API process vs. a naive FastAPI app.

Closed loop, concurrency 50, with auth and publisher confirms on both sides. The two
run interleaved (A B B A) on the same broker, database server and CPUs.
"""

import asyncio
import sys

from bench.infra import Resources, register_job_types, resources
from bench.load import LoadStats, auth, closed_loop
from bench.procs import Group, free_port, group, python_proc, wait_http_ok
from bench.report import Result, summary_ms
from bench.system import settle, start_api

NAIVE_TOKEN = "naive-bench-token-0123456789"


def start_naive(res: Resources, g: Group) -> str:
    """Start the naive app under uvicorn; return its URL."""
    port = free_port()
    env = {
        "NAIVE_DSN": res.dsn,
        "NAIVE_AMQP_URL": res.amqp_url(),
        "NAIVE_TOKEN": NAIVE_TOKEN,
    }
    args = ["-m", "uvicorn", "bench.peers.naive_app:app", "--port", str(port)]
    proc = g.add(python_proc("naive", args, env))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/docs", proc)
    return url


def run(quick: bool = False) -> list[Result]:
    """Run the scenario; ``quick`` shortens every round."""
    concurrency, rounds, round_s, warmup_s = 50, 2, (3.0 if quick else 10.0), 1.0
    result = Result("enqueue", params={"concurrency": concurrency, "seconds": rounds * round_s})
    with resources("enqueue") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("bench")
        api, api_url = start_api(res, g)
        naive_url = start_naive(res, g)
        settle()
        body = {"type": "noop", "payload": {}}
        sides = {
            "errand api": (f"{api_url}/v1/jobs", auth(key)),
            "naive app": (f"{naive_url}/v1/jobs", auth(NAIVE_TOKEN)),
        }
        stats = {name: LoadStats() for name in sides}
        order = ["errand api", "naive app", "naive app", "errand api"][: rounds * 2]
        for name in order:
            url, headers = sides[name]
            run_stats = asyncio.run(
                closed_loop(
                    url,
                    headers,
                    lambda _i: body,
                    concurrency=concurrency,
                    duration_s=round_s,
                    warmup_s=warmup_s,
                )
            )
            print(f"  {name}: {run_stats.rate:,.0f} req/s", file=sys.stderr)
            stats[name].merge(run_stats)
        accepted = res.sql("SELECT count(*) FROM jobs")[0][0]
        unpublished = res.sql("SELECT count(*) FROM jobs WHERE published_at IS NULL")[0][0]
        api_mem = api.memory()
    for name, s in stats.items():
        lat = summary_ms(s.latencies_s)
        result.row(
            name,
            req_s=round(s.rate, 1),
            p50_ms=lat["p50_ms"],
            p99_ms=lat["p99_ms"],
            ok=s.ok,
            errors=s.errors,
        )
    errand, naive = stats["errand api"], stats["naive app"]
    ratio = errand.rate / naive.rate if naive.rate else float("nan")
    result.target("enqueue req/s vs naive app", ratio, ">=", 1.0, unit="x")
    result.target("enqueue p99", summary_ms(errand.latencies_s)["p99_ms"], "<=", 50, unit="ms")
    result.zero("enqueue errors", errand.errors)
    result.zero("enqueue: jobs never published", float(str(unpublished)))
    result.notes.append(
        f"{accepted} Errand jobs written; API RSS after the run {api_mem['max_rss']} MB"
    )
    if errand.error_kinds or naive.error_kinds:
        result.notes.append(
            f"errors: errand {dict(errand.error_kinds)}, naive {dict(naive.error_kinds)}"
        )
    return [result]
