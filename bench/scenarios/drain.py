"""Scenario 2: drain N single-step ``noop`` jobs with 2 worker processes x 8 threads.

Errand's backlog is submitted through the API with no worker running; the workers
then start and the drain is timed from the first job's ``started_at`` to the last
job's ``finished_at``. The peers (raw Dramatiq no-op actor, Celery no-op task with
the prefork pool and concurrency 2) drain the same N on the same broker, each on its
own vhost, timed from their first task start to their last task finish.
"""

import sys
import time
from typing import Any

from bench import dbq
from bench.infra import Resources, register_job_types, resources
from bench.peers import drive
from bench.procs import Group, group
from bench.report import Result
from bench.system import start_api, start_worker, submit_batches

#: Peers finish 20,000 no-ops in seconds; Errand's drain is capped so that ``make bench``
#: stays within its 15 minutes (the rate is then over the jobs finished within the cap).
DRAIN_CAP_S = 75.0
PEER_TIMEOUT_S = 120.0


def errand_drain(
    res: Resources,
    g: Group,
    api_url: str | list[str],
    key: str,
    n: int,
    *,
    processes: int = 2,
    threads: int = 8,
    cap_s: float = DRAIN_CAP_S,
) -> dict[str, Any]:
    """Submit ``n`` noop jobs with no worker running, then start the workers; time the drain.

    The job types must be registered (:func:`bench.infra.register_job_types`). After
    ``cap_s`` the drain stops: ``unfinished`` says how many were left, and ``lost``
    counts only jobs that ended in another status than completed.
    """
    t0 = time.perf_counter()
    ids, errors = submit_batches(api_url, key, [{"type": "noop", "payload": {}}] * n)
    submit_s = time.perf_counter() - t0
    print(f"  errand: {len(ids)} jobs submitted in {submit_s:.1f} s", file=sys.stderr)
    worker = start_worker(res, g, processes=processes, threads=threads, wait=False)
    done = dbq.wait_final(res, len(ids), cap_s)
    memory = worker.memory()
    worker.stop()
    win = dbq.window(res)
    unfinished = len(ids) - dbq.count_final(res)
    return {
        "jobs_s": round(win.completed / win.seconds, 1),
        "drain_s": round(win.seconds, 2),
        "wall_s": round(win.last_finish - worker.started, 2),
        "completed": win.completed,
        "unfinished": unfinished,
        "lost": dbq.not_completed(res, ids) - unfinished,
        "twice": dbq.completed_twice(res),
        "submit_errors": errors,
        "capped": not done,
        "submit_s": round(submit_s, 1),
        "worker_memory": memory,
    }


def peer_drain(res: Resources, g: Group, peer: str, n: int) -> dict[str, Any]:
    """Fill the peer's own vhost with ``n`` no-ops, start its worker, time the drain."""
    vhost = res.add_vhost(peer)
    prefix = f"{res.redis_prefix}{peer}:"
    fill = drive.fill_dramatiq if peer == "dramatiq" else drive.fill_celery
    start = drive.start_dramatiq if peer == "dramatiq" else drive.start_celery
    fill(res, vhost, n)
    proc = start(res, g, vhost, prefix)
    drained = drive.wait_drained(proc, prefix, n, PEER_TIMEOUT_S)
    proc.stop()
    return {
        "jobs_s": round(drained.count / drained.seconds, 1),
        "drain_s": round(drained.seconds, 2),
        "wall_s": round(drained.last - drained.worker_started, 2),
        "completed": drained.count,
        "lost": max(0, n - drained.count),
        "twice": max(0, drained.count - n),
    }


def run(quick: bool = False) -> list[Result]:
    """Run the scenario (``quick``: N = 1,000)."""
    n = 1_000 if quick else 20_000
    result = Result("drain", params={"n": n, "errand": "2 processes x 8 threads"})
    rows: dict[str, dict[str, Any]] = {}
    with resources("drain") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("bench")
        apis = [start_api(res, g) for _ in range(2)]  # two, to build the backlog faster
        rows["errand noop (2x8)"] = errand_drain(res, g, [url for _, url in apis], key, n)
        api_mem = [api.memory()["max_rss"] for api, _ in apis]
        g.stop_all()
        rows["dramatiq no-op (2x8)"] = peer_drain(res, g, "dramatiq", n)
        g.stop_all()
        rows["celery no-op (prefork 2)"] = peer_drain(res, g, "celery", n)
    for name, row in rows.items():
        shown = {k: v for k, v in row.items() if k != "worker_memory"}
        result.row(name, **shown)
    errand, celery = rows["errand noop (2x8)"], rows["celery no-op (prefork 2)"]
    result.target("drain jobs/s", errand["jobs_s"], ">=", 1000, unit="jobs/s")
    ratio = errand["jobs_s"] / celery["jobs_s"] if celery["jobs_s"] else float("nan")
    result.target("drain vs Celery no-op", ratio, ">=", 0.6, unit="x")
    for name, row in rows.items():
        result.zero(f"drain lost ({name})", row["lost"])
        result.zero(f"drain completed twice ({name})", row["twice"])
    mem = rows["errand noop (2x8)"]["worker_memory"]
    result.notes.append(f"Errand worker memory after the drain (MB): {mem}")
    result.notes.append(
        f"backlog built through two API processes (POST /v1/jobs:batch); their RSS after "
        f"{n:,} submissions: {api_mem} MB"
    )
    if errand["capped"]:
        result.notes.append(
            f"Errand's drain was capped at {DRAIN_CAP_S:g} s: jobs/s is over the "
            f"{errand['completed']:,} jobs finished by then; 'lost' counts jobs that ended "
            "in another status than completed, not the unfinished ones"
        )
    result.notes.append(
        "wall_s: from the worker command's start (imports, connections) to the last finish"
    )
    return [result]
