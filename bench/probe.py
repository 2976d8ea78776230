"""``python -m bench.probe [VARIANT ...]``: compare worker settings in one alternating run.

The drain's absolute rate on a shared 2-core machine drifts by 15% or more within
minutes (bench/README.md), more than most changes are worth. So a change is measured
here by alternating its variants, run after run, in one invocation, each run on a
fresh database: the scenario's backlog of ``noop`` jobs (2 x 8 workers by default) is
submitted with no worker running, then the workers start with the variant's
environment. Beside jobs/s (the scenario's own measure: first start to last finish),
each run reports the cost per job over its steady part (after the first
:data:`WARM` jobs, until :data:`TAIL` are left): the CPU of the worker processes (user
and system), of every PostgreSQL process, of RabbitMQ and of Redis, the transactions
committed in the run's database (PostgreSQL counts them up to a second late; the
probe's own polling adds about eight a second) and the commands the Redis server ran
(a script's own commands included, and any other client's). CPU per job moves less
with the machine than jobs/s does, and the counts not at all.

A variant is ``NAME`` (the defaults) or ``NAME:VAR=VALUE[,VAR=VALUE...]``, for
example ``python -m bench.probe base nogroups:ERRAND_STEP_GROUP_MAX=0``. To compare
two builds of the code, switch between them with a variable of a scratch build; the
probe itself only sets the environment. Results go to ``bench/results/probe-*.json``.
"""

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import redis

from bench import dbq
from bench.infra import REDIS_URL, Resources, register_job_types, resources
from bench.procs import group
from bench.report import RESULTS_DIR
from bench.system import start_api, start_worker, submit_batches

#: The steady part of a run starts once this many jobs are final (boot and warm-up
#: are not a job's cost) ...
WARM = 500
#: ... and ends when this many are left (the last threads running dry).
TAIL = 300
#: A run's drain gives up after this long.
DRAIN_CAP_S = 300.0
#: The servers whose CPU is counted, by process name.
SERVERS = {"postgres": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}


@dataclass
class Variant:
    """A named set of environment variables for the worker."""

    name: str
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``NAME`` or ``NAME:VAR=VALUE[,VAR=VALUE...]``."""
        name, _, assignments = text.partition(":")
        env: dict[str, str] = {}
        for item in filter(None, assignments.split(",")):
            var, sep, value = item.partition("=")
            if not sep or not var:
                raise ValueError(f"not VAR=VALUE: {item!r} in variant {text!r}")
            env[var] = value
        return cls(name, env)


def _cpu(procs: Iterable[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds of ``procs`` (those that ended count nothing)."""
    user = system = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        user, system = user + times.user, system + times.system
    return user, system


def _servers() -> dict[str, dict[int, float]]:
    """Each server's processes (PostgreSQL's backends come and go) and their CPU
    seconds, by pid."""
    found: dict[str, dict[int, float]] = {key: {} for key in SERVERS}
    for proc in psutil.process_iter(["name"]):
        for key, name in SERVERS.items():
            if proc.info["name"] == name:
                found[key][proc.pid] = sum(_cpu([proc]))
    return found


def _grown(first: dict[int, float], last: dict[int, float]) -> float:
    """CPU seconds the processes alive at the last reading spent since the first (one
    started meanwhile: all of its own; one that ended meanwhile counts nothing)."""
    return sum(cpu - first.get(pid, 0.0) for pid, cpu in last.items())


@dataclass
class _Reading:
    """Counters read at one moment of a run."""

    final: int
    worker: tuple[float, float]
    servers: dict[str, dict[int, float]]
    commits: int
    redis_commands: int

    @classmethod
    def take(cls, res: Resources, worker: list[psutil.Process], client: redis.Redis) -> "_Reading":
        servers = _servers()
        rows = res.sql(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        info = client.info("stats")
        return cls(
            final=dbq.count_final(res),
            worker=_cpu(worker),
            servers=servers,
            commits=int(str(rows[0][0])),
            redis_commands=int(info["total_commands_processed"]),
        )


def run_variant(variant: Variant, n: int, processes: int, threads: int) -> dict[str, Any]:
    """One run of ``variant``: submit ``n`` noop jobs, drain them, return its figures."""
    with resources("probe") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("probe")
        apis = [start_api(res, g) for _ in range(2)]
        ids, errors = submit_batches(
            [url for _, url in apis], key, [{"type": "noop", "payload": {}}] * n
        )
        for api, _ in apis:
            api.stop()
        worker = start_worker(
            res, g, processes=processes, threads=threads, wait=False, **variant.env
        )
        client = redis.Redis.from_url(REDIS_URL)
        try:
            warm, tail = min(WARM, n // 4), min(TAIL, n // 4)
            drained = dbq.wait_final(res, warm, DRAIN_CAP_S)
            family = [psutil.Process(pid) for pid in worker.pids()]
            first = _Reading.take(res, family, client)
            drained = drained and dbq.wait_final(res, len(ids) - tail, DRAIN_CAP_S)
            last = _Reading.take(res, family, client)
            drained = drained and dbq.wait_final(res, len(ids), DRAIN_CAP_S)
        finally:
            client.close()
        worker.stop()
        win = dbq.window(res)
        jobs = last.final - first.final

        def per_job(value: float, scale: float = 1000.0) -> float | None:
            # None: the steady part was too short to see a job finish (a tiny n)
            return round(value / jobs * scale, 3) if jobs > 0 else None

        return {
            "variant": variant.name,
            "jobs_s": round(win.completed / win.seconds, 1) if win.seconds else 0.0,
            "completed": win.completed,
            "lost": dbq.not_completed(res, ids),
            "twice": dbq.completed_twice(res),
            "submit_errors": errors,
            "timed_out": not drained,
            "window_jobs": jobs,
            "worker_user_ms": per_job(last.worker[0] - first.worker[0]),
            "worker_sys_ms": per_job(last.worker[1] - first.worker[1]),
            **{
                f"{key}_ms": per_job(_grown(first.servers[key], last.servers[key]))
                for key in SERVERS
            },
            "commits_per_job": per_job(last.commits - first.commits, 1.0),
            "redis_commands_per_job": per_job(last.redis_commands - first.redis_commands, 1.0),
        }


def failed(run: dict[str, Any]) -> bool:
    """A run that lost or repeated a job, could not submit them all, or did not drain."""
    return bool(run["lost"] or run["twice"] or run["submit_errors"] or run["timed_out"])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant's means over its runs that did not fail (numbers only), in the
    order first seen; ``failed`` counts the others."""
    names = list(dict.fromkeys(run["variant"] for run in runs))
    fields = list(dict.fromkeys(f for run in runs for f, v in run.items() if isinstance(v, float)))
    means = []
    for name in names:
        mine = [run for run in runs if run["variant"] == name]
        good = [run for run in mine if not failed(run)]
        row: dict[str, Any] = {"variant": name, "runs": len(good), "failed": len(mine) - len(good)}
        for field in fields:
            values = [run[field] for run in good if run.get(field) is not None]
            row[field] = round(sum(values) / len(values), 3) if values else None
        means.append(row)
    return means


def main(argv: list[str] | None = None) -> int:
    """Run the variants alternately and print each run and the means."""
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("variants", nargs="*", default=["base"], help="NAME[:VAR=VALUE,...]")
    parser.add_argument("--n", type=int, default=8_000, help="noop jobs per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    variants = [Variant.parse(text) for text in args.variants]
    runs: list[dict[str, Any]] = []
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"probe-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for round_no in range(args.rounds):
        for variant in variants:
            run = run_variant(variant, args.n, args.processes, args.threads)
            run["round"] = round_no + 1
            runs.append(run)
            print(json.dumps(run), flush=True)
            # Kept run by run: a probe stopped half way keeps what it measured
            out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    means = summarize(runs)
    print("\nmeans per variant (runs that failed left out):")
    for row in means:
        print(json.dumps(row))
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "means": means}, indent=2))
    print(f"written: {out}", file=sys.stderr)
    return 1 if any(failed(run) for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
