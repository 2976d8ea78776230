"""Scenario 7: recovery from a worker killed mid-step, and from a broker outage.

- kill -9: two worker instances; a one-step job of a few seconds starts on one of them,
  which is killed (SIGKILL to its whole process group) mid-step. Measured: kill to the
  ``started_at`` of the step's next attempt (``job_attempts``), with the product's
  lease (4 s) and heartbeat (1 s) defaults. A replacement worker is started per trial.
- broker cut: api and workers reach RabbitMQ through a TCP proxy; ``noop`` jobs are
  submitted at a steady rate while the proxy is cut for 10 s. Measured: restore to the
  last job's ``finished_at``; accepted jobs that never completed; steps completed twice.
"""

import asyncio
import contextlib
import time
from typing import Any

from bench import dbq
from bench.infra import Resources, register_job_types, resources
from bench.load import LoadStats, auth, open_loop
from bench.procs import Group, Proc, group, wait_for
from bench.report import Result, pct
from bench.system import settle, start_api, start_worker, wait_worker_ready
from bench.tcp_proxy import TcpProxy


def running_attempt(res: Resources, job_id: str, attempt: int) -> tuple[str, float] | None:
    """(worker, started_at) of the job's step-0 attempt number ``attempt``, once started."""
    rows = res.sql(
        "SELECT worker, extract(epoch FROM started_at)::float8 FROM job_attempts"
        " WHERE job_id = %s AND step_index = 0 AND attempt = %s",
        job_id,
        attempt,
    )
    return (str(rows[0][0]), float(str(rows[0][1]))) if rows else None


def owner_of(workers: list[Proc], worker_name: str) -> Proc:
    """The worker instance whose process tree holds ``host:pid``."""
    pid = int(worker_name.rsplit(":", 1)[1])
    return next(w for w in workers if pid in w.pids())


def kill_trial(
    res: Resources,
    g: Group,
    api_url: str,
    key: str,
    workers: list[Proc],
    *,
    step_s: float = 3.0,
    replace: bool = True,
) -> float:
    """One kill -9 mid-step; return seconds from the kill to the step running again.

    ``workers`` must hold at least two worker instances; the killed one is removed
    (and, with ``replace``, a new one started for the next trial).
    """
    import httpx

    step = {"name": "long", "duration_s": step_s, "ticks": max(1, round(step_s * 2))}
    body = {"type": "demo.pipeline", "payload": {"steps": [step]}}
    job = httpx.post(f"{api_url}/v1/jobs", json=body, headers=auth(key), timeout=10).json()
    job_id = str(job["id"])
    first = wait_for(lambda: running_attempt(res, job_id, 1), 30, 0.02, what="attempt 1")
    time.sleep(min(1.0, step_s / 2))  # mid-step, after a heartbeat when the step is long
    victim = owner_of(workers, first[0])
    killed_at = time.time()
    victim.signal(9)
    victim.proc.wait(10)
    workers.remove(victim)
    second = wait_for(lambda: running_attempt(res, job_id, 2), 30, 0.02, what="attempt 2")
    if replace:
        workers.append(start_worker(res, g, processes=1, threads=4, name="worker-replacement"))
    wait_for(
        lambda: res.sql("SELECT status FROM jobs WHERE id = %s", job_id)[0][0] == "completed",
        30,
        0.1,
        what="the job to complete",
    )
    return second[1] - killed_at


async def submit_through_cut(
    url: str, key: str, proxy: TcpProxy, rate: float, before: float, cut: float, after: float
) -> tuple[LoadStats, float]:
    """Submit at ``rate`` for before+cut+after seconds; cut the broker in the middle."""
    loop = asyncio.get_running_loop()
    load = asyncio.create_task(
        open_loop(
            f"{url}/v1/jobs",
            auth(key),
            lambda _i: {"type": "noop", "payload": {}},
            rate=rate,
            duration_s=before + cut + after,
        )
    )
    await asyncio.sleep(before)
    await loop.run_in_executor(None, proxy.cut)
    await asyncio.sleep(cut)
    await loop.run_in_executor(None, proxy.restore)
    restored = time.time()
    return await load, restored


def broker_cut(
    rate: float, before: float, cut: float, after: float, res: Resources | None = None
) -> dict[str, Any]:
    """Submit at ``rate`` and cut the broker in the middle (on ``res``, or new resources)."""
    with contextlib.ExitStack() as stack:
        if res is None:
            res = stack.enter_context(resources("brokercut"))
            register_job_types(res)
        g = stack.enter_context(group())
        proxy = stack.enter_context(TcpProxy())
        _, key = res.make_user(f"cut-{time.monotonic_ns()}")
        env = res.env(amqp_port=proxy.port)
        worker = start_worker(res, g, wait=False, ERRAND_RABBITMQ_URL=env["ERRAND_RABBITMQ_URL"])
        _, api_url = start_api(res, g, **env)
        wait_worker_ready(worker, 2)
        settle(1.0)
        stats, restored = asyncio.run(
            submit_through_cut(api_url, key, proxy, rate, before, cut, after)
        )
        ids = [str(b["id"]) for b in stats.bodies]
        done = dbq.wait_final(res, len(ids), 180)
        win = dbq.window(res)
        resumed = res.sql(
            "SELECT extract(epoch FROM min(started_at))::float8 FROM jobs"
            " WHERE started_at > to_timestamp(%s)",
            restored,
        )[0][0]
        return {
            "rate": rate,
            "cut_s": cut,
            "accepted": len(ids),
            "accepted_per_s": round(len(ids) / (before + cut + after), 1),
            "not_accepted": stats.errors,
            "first_start_after_return_s": round(float(str(resumed)) - restored, 2)
            if resumed is not None
            else float("nan"),
            "drain_after_return_s": round(win.last_finish - restored, 2),
            "lost": dbq.not_completed(res, ids),
            "twice": dbq.completed_twice(res),
            "timed_out": not done,
        }


def run(quick: bool = False) -> list[Result]:
    """Run both parts (``quick``: one kill, a 4 s cut at 100 jobs/s)."""
    trials = 1 if quick else 2
    result = Result("recovery", params={"kill_trials": trials, "lease_s": 4, "heartbeat_s": 1})
    with resources("recovery") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("bench")
        _, api_url = start_api(res, g)
        workers = [
            start_worker(res, g, processes=1, threads=4, name=f"worker-{i}", wait=False)
            for i in range(2)
        ]
        for worker in workers:
            wait_worker_ready(worker, 1)
        recoveries = [kill_trial(res, g, api_url, key, workers) for _ in range(trials)]
        twice_kill = dbq.completed_twice(res)
        lost_kill = trials - int(
            str(res.sql("SELECT count(*) FROM jobs WHERE status = 'completed'")[0][0])
        )
    result.row(
        "kill -9 mid-step",
        trials=trials,
        recovery_max_s=round(max(recoveries), 2),
        recovery_p50_s=round(pct(recoveries, 50), 2),
        all_s=", ".join(f"{r:.2f}" for r in recoveries),
        lost=lost_kill,
        twice=twice_kill,
    )
    cut = broker_cut(*((100.0, 2.0, 4.0, 2.0) if quick else (200.0, 5.0, 10.0, 5.0)))
    result.row(f"broker cut {cut['cut_s']:g} s at {cut['rate']:g} jobs/s", **cut)
    result.target("kill -9 -> step running again (max)", max(recoveries), "<=", 5, unit="s")
    result.zero("recovery: lost jobs (kill -9)", lost_kill)
    result.zero("recovery: steps completed twice (kill -9)", twice_kill)
    result.zero("recovery: lost jobs (broker cut)", cut["lost"])
    result.zero("recovery: steps completed twice (broker cut)", cut["twice"])
    result.notes.append(
        "not_accepted = submissions answered with an error or not answered within the "
        "client's 30 s timeout (the client knows; not lost); lost = accepted (202) jobs "
        "that never completed"
    )
    return [result]
