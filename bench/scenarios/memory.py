"""Scenario 6: memory of api, worker (2 x 8) and notifier, idle and after load.

Idle is measured a few seconds after start; "after" once N noop jobs (5,000, or 1,000
in ``make bench`` to keep it within its 15 minutes) were submitted through the API and
run by the worker, with the notifier relaying their events. The drain scenario
also reports the worker's memory right after draining its 20,000 jobs. RSS per process
from /proc (psutil); for the worker, a Dramatiq parent with two forked children, also
the total RSS and total PSS of the tree (PSS splits the pages the children share with
their parent, so it is what the tree costs).
"""

import time
from typing import Any

from bench import dbq
from bench.infra import resources
from bench.procs import Proc, group
from bench.report import Result
from bench.system import settle, start_api, start_notifier, start_worker, submit_batches


def snapshot(procs: dict[str, Proc]) -> dict[str, dict[str, float]]:
    """Memory of each service now."""
    return {name: proc.memory() for name, proc in procs.items()}


def run(quick: bool = False, suite: bool = False) -> list[Result]:
    """Run the scenario (``quick`` and in ``make bench``: N = 1,000; else 5,000)."""
    n = 1_000 if quick or suite else 5_000
    result = Result("memory", params={"n": n, "worker": "2x8"})
    with resources("memory") as res, group() as g:
        _, key = res.make_user("bench")
        api, api_url = start_api(res, g)
        notifier, _ = start_notifier(res, g)
        worker = start_worker(res, g)
        procs = {"api": api, "worker": worker, "notifier": notifier}
        settle(3.0)
        idle = snapshot(procs)
        t0 = time.perf_counter()
        ids, errors = submit_batches(api_url, key, [{"type": "noop", "payload": {}}] * n)
        done = dbq.wait_final(res, len(ids), 300)
        load_s = time.perf_counter() - t0
        settle(2.0)
        after = snapshot(procs)
        lost, twice = dbq.not_completed(res, ids), dbq.completed_twice(res)
    for name in procs:
        row: dict[str, Any] = {
            "idle_rss_mb": idle[name]["max_rss"],
            "after_rss_mb": after[name]["max_rss"],
        }
        if name == "worker":
            row |= {
                "idle_tree_rss_mb": idle[name]["total_rss"],
                "after_tree_rss_mb": after[name]["total_rss"],
                "idle_tree_pss_mb": idle[name]["total_pss"],
                "after_tree_pss_mb": after[name]["total_pss"],
            }
        result.row(name, **row)
    result.target("api RSS after load", after["api"]["max_rss"], "<=", 150, unit="MB")
    result.target(
        "worker (2x8 tree, PSS) after load", after["worker"]["total_pss"], "<=", 200, unit="MB"
    )
    result.target("worker (largest process, RSS)", after["worker"]["max_rss"], "<=", 200, unit="MB")
    result.zero("memory: lost", lost)
    result.zero("memory: completed twice", twice)
    result.notes.append(
        f"{len(ids)} jobs submitted and run in {load_s:.0f} s (submit errors {errors}, "
        f"finished in time: {done}); notifier RSS at 5,000 clients: see the notifier scenario"
    )
    return [result]
