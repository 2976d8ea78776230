"""``python -m bench.profile api|worker``: where the CPU goes, with py-spy.

- ``api``: one ``errand api`` under a closed loop of ``POST /v1/jobs`` (concurrency 50);
- ``worker``: ``errand worker`` (2 x 8) draining a backlog of ``noop`` jobs.

py-spy samples only the thread holding the GIL (``--gil``): the Python CPU of the
process, which is what limits a single process. Prints the share of samples per
package, per Errand phase and the hottest frames; keeps the raw samples under
``bench/results/``.
"""

import argparse
import asyncio
import collections
import subprocess
import threading
from pathlib import Path

from bench import dbq
from bench.infra import register_job_types, resources
from bench.load import auth, closed_loop
from bench.procs import Proc, group
from bench.report import RESULTS_DIR
from bench.system import settle, start_api, start_worker, submit_batches

PACKAGES = [
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "pydantic",
    "fastapi",
    "starlette",
    "anyio",
    "uvicorn",
    "asyncio",
    "errand_api",
    "errand_worker",
    "errand_schema",
    "dramatiq",
    "pika",
    "redis",
    "jsonschema",
    "logging",
    "json",
    "threading",
    "opentelemetry",
    "prometheus_client",
]


def record(proc: Proc, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on ``proc`` (and its children) for ``seconds``."""
    args = ["py-spy", "record", "-p", str(proc.pid), "--subprocesses", "--gil"]
    args += ["-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _package(frame: str) -> str:
    where = frame[frame.rfind("(") + 1 :]
    for package in PACKAGES:
        if where.startswith((f"{package}/", f"{package}.py")) or f"/{package}/" in where:
            return package
    return "other"


def summarize(path: Path, phases: list[str], top: int = 15) -> str:
    """Shares of samples per package (self time), per phase (inclusive) and hottest frames."""
    total = 0
    by_package: collections.Counter[str] = collections.Counter()
    by_phase: collections.Counter[str] = collections.Counter()
    by_frame: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        by_package[_package(frames[-1])] += n
        by_frame[frames[-1][:110]] += n
        phase = next((p for p in phases if p in stack), "other")
        by_phase[phase] += n

    def block(title: str, counter: collections.Counter[str], k: int) -> list[str]:
        rows = [f"{100 * v / max(total, 1):5.1f}%  {name}" for name, v in counter.most_common(k)]
        return [f"{title}:", *rows, ""]

    lines = [f"{total} samples holding the GIL ({path})", ""]
    lines += block("self time by package", by_package, 12)
    lines += block("inclusive time by phase (first match)", by_phase, len(phases) + 1)
    lines += block("hottest frames (self)", by_frame, top)
    return "\n".join(lines)


API_PHASES = [
    "get_principal (",
    "_take_tokens (",
    "create_job (",
    "EventPublisher.publish (",
    "publish_job (",
    "Session.commit (",
    "WorkerThread.run (",
    "Runner.run (",
]
WORKER_PHASES = [
    "claim_step (",
    "complete_step (",
    "EventPublisher.publish (",
    "_send_next (",
    "WorkerRuntime.transaction (",
    "LeaseKeeper",
    "Reconciler",
    "ConsumerThread.run (",
    "WorkerThread.run (",
]


def profile_api(seconds: float) -> str:
    """Profile ``errand api`` under ``POST /v1/jobs`` at concurrency 50."""
    out = RESULTS_DIR / "profile-api.pyspy.txt"
    with resources("profile") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("bench")
        api, url = start_api(res, g)
        settle()
        spy = record(api, seconds, out)
        body = {"type": "noop", "payload": {}}
        stats = asyncio.run(
            closed_loop(
                f"{url}/v1/jobs", auth(key), lambda _i: body, concurrency=50, duration_s=seconds + 1
            )
        )
        spy.wait()
    head = f"api: {stats.rate:.0f} req/s during the profile\n"
    return head + summarize(out, API_PHASES)


def profile_worker(seconds: float, n: int) -> str:
    """Profile ``errand worker`` (2 x 8) draining ``n`` noop jobs."""
    out = RESULTS_DIR / "profile-worker.pyspy.txt"
    with resources("profile") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("bench")
        _, url = start_api(res, g)
        submit_batches(url, key, [{"type": "noop", "payload": {}}] * n)
        worker = start_worker(res, g)
        done_before = dbq.count_final(res)
        spy = record(worker, seconds, out)
        timer = threading.Event()
        timer.wait(seconds)
        rate = (dbq.count_final(res) - done_before) / seconds
        spy.wait()
    return f"worker: {rate:.0f} jobs/s during the profile\n" + summarize(out, WORKER_PHASES)


def main() -> None:
    """Profile the named service and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("target", choices=["api", "worker"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    RESULTS_DIR.mkdir(exist_ok=True)
    if args.target == "api":
        print(profile_api(args.seconds))
    else:
        print(profile_worker(args.seconds, 4000))


if __name__ == "__main__":
    main()
