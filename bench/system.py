"""Starting Errand's services (``errand api|worker|notifier``) for a scenario."""

import asyncio
import time
from typing import Any

from bench.infra import Resources
from bench.load import LoadStats, auth, submit_all
from bench.procs import Group, Proc, errand, free_port, wait_for, wait_http_ok

READY_LINE = "ready for action"


def start_api(res: Resources, g: Group, **env: str) -> tuple[Proc, str]:
    """Start one ``errand api``; return it and its URL once ``/readyz`` answers."""
    port = free_port()
    proc = g.add(errand("api", {**res.env(), "ERRAND_PORT": str(port), **env}))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/readyz", proc)
    return proc, url


def start_notifier(res: Resources, g: Group, **env: str) -> tuple[Proc, str]:
    """Start one ``errand notifier``; return it and its URL once ``/readyz`` answers."""
    port = free_port()
    proc = g.add(errand("notifier", {**res.env(), "ERRAND_PORT": str(port), **env}))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/readyz", proc)
    return proc, url


def start_worker(
    res: Resources,
    g: Group,
    *,
    processes: int = 2,
    threads: int = 8,
    wait: bool = True,
    name: str = "worker",
    **env: str,
) -> Proc:
    """Start ``errand worker`` (``ERRAND_PROCESSES`` x ``ERRAND_THREADS``).

    With ``wait``, return once every worker process has logged that it is consuming.
    """
    proc = g.add(
        errand(
            "worker",
            {
                **res.env(),
                "ERRAND_PROCESSES": str(processes),
                "ERRAND_THREADS": str(threads),
                **env,
            },
            name=name,
        )
    )
    if wait:
        wait_worker_ready(proc, processes)
    return proc


def wait_worker_ready(proc: Proc, processes: int, timeout_s: float = 60.0) -> None:
    """Wait until ``processes`` Dramatiq worker processes said they are ready."""

    def ready() -> bool:
        proc.check()
        return proc.log().count(READY_LINE) >= processes

    try:
        wait_for(ready, timeout_s, 0.1, what=f"{proc.name} to start")
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\n{proc.log()[-3000:]}") from exc


def settle(seconds: float = 2.0) -> None:
    """Let freshly started processes finish their lazy start-up before measuring."""
    time.sleep(seconds)


def submit_batches(
    api_url: str | list[str],
    key: str,
    jobs: list[dict[str, Any]],
    *,
    size: int = 50,
    concurrency: int = 8,
) -> tuple[list[str], int]:
    """Submit ``jobs`` through ``POST /v1/jobs:batch``; return accepted ids and errors.

    The batch endpoint writes the same rows and messages as ``POST /v1/jobs``, in
    fewer round trips, so a backlog of thousands is built quickly. Several API URLs
    share the batches (and ``concurrency`` each).
    """
    urls = [api_url] if isinstance(api_url, str) else api_url
    bodies = [{"jobs": jobs[i : i + size]} for i in range(0, len(jobs), size)]

    async def submit() -> list[LoadStats]:
        return list(
            await asyncio.gather(
                *(
                    submit_all(
                        f"{url}/v1/jobs:batch",
                        auth(key),
                        bodies[i :: len(urls)],
                        concurrency=concurrency,
                    )
                    for i, url in enumerate(urls)
                )
            )
        )

    parts = asyncio.run(submit())
    ids = [str(job["id"]) for stats in parts for body in stats.bodies for job in body["data"]]
    return ids, sum(stats.errors for stats in parts)
