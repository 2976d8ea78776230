"""``errand dev`` as a newcomer runs it, and ``errand submit --wait`` against it."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from errand.client import ErrandClient
from errand.watch import JobWatcher

from helpers import ServiceProcess, free_port, wait_for, wait_http_ok

pytestmark = pytest.mark.e2e
#: ``errand dev``'s URL, its folder and its process.
DevServer = tuple[str, Path, ServiceProcess]


@pytest.fixture(scope="module")
def dev_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevServer]:
    """``errand dev`` in a fresh folder; yields its URL, the folder and the process."""
    folder = tmp_path_factory.mktemp("devmode")
    port = free_port()
    proc = ServiceProcess("dev", ["dev", "--port", str(port)], {}, cwd=str(folder))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", 60, proc=proc)
        yield url, folder, proc
    finally:
        proc.stop()


def test_dev_prints_the_url_and_an_admin_key(
    dev_server: DevServer,
) -> None:
    url, folder, proc = dev_server
    state = json.loads((folder / ".errand" / "dev.json").read_text())
    assert state["url"] == url
    assert state["api_key"].startswith("erk_")
    # And the banner names the dashboard (which answers) and the key to sign in with
    wait_for(lambda: "API key" in proc.log(), 10, 0.1, what="the banner")
    banner = proc.log()
    assert f"Dashboard  {url}/admin" in banner
    assert state["api_key"] in banner
    assert httpx.get(f"{url}/admin", timeout=10).status_code == 200


def test_the_four_step_flow_streams_in_order_in_dev_mode(dev_server: DevServer) -> None:
    url, folder, _ = dev_server
    key = json.loads((folder / ".errand" / "dev.json").read_text())["api_key"]
    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def collect(event: dict[str, Any]) -> None:
        with lock:
            events.append(event)

    watcher = JobWatcher(url, key, on_event=collect)
    watcher.connect()
    steps = [{"name": f"s{i}", "duration_s": 0.2, "ticks": 2} for i in range(4)]
    with ErrandClient(url, key) as client:
        job = client.submit("demo.pipeline", {"steps": steps})
        watcher.watch(job["id"])
        assert watcher.wait([job["id"]], 60)
        watcher.close()
        final = client.get(job["id"])
    assert [e["seq"] for e in events] == list(range(1, final["seq"] + 1))
    assert events[0]["type"] == "queued"
    assert events[-1]["type"] == "completed"
    assert final["status"] == "completed"
    assert [s["status"] for s in final["steps"]] == ["completed"] * 4


def test_submit_wait_shows_progress_and_ends_completed(dev_server: DevServer) -> None:
    _, folder, _ = dev_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "errand",
            "submit",
            "demo.pipeline",
            "--wait",
            "--payload",
            json.dumps(
                {
                    "steps": [
                        {"name": "one", "duration_s": 0.3, "ticks": 3},
                        {"name": "two", "duration_s": 0.3, "ticks": 3},
                    ]
                }
            ),
        ],
        cwd=folder,
        env={**env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100%" in result.stdout
    assert "completed" in result.stdout


def test_submit_wait_exits_non_zero_when_the_job_fails(dev_server: DevServer) -> None:
    _, folder, _ = dev_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    payload = {"steps": [{"name": "boom", "duration_s": 0, "fail_permanently": True}]}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "errand",
            "submit",
            "demo.pipeline",
            "--wait",
            "--payload",
            json.dumps(payload),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout
    assert "PermanentError" in result.stderr


def _errand(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    return subprocess.run(
        [sys.executable, "-m", "errand", *args],
        cwd=folder,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_cancels_retries_watches_and_works_the_dlq(dev_server: DevServer) -> None:
    url, folder, _ = dev_server
    key = json.loads((folder / ".errand" / "dev.json").read_text())["api_key"]
    with ErrandClient(url, key) as client:
        # cancel a long job, retry it with short steps, and watch it complete
        long_job = client.submit(
            "demo.pipeline", {"steps": [{"name": "long", "duration_s": 60, "ticks": 600}]}
        )
        assert _errand(folder, "cancel", long_job["id"]).returncode == 0
        cancelled = _errand(folder, "watch", long_job["id"])
        assert cancelled.returncode == 1
        assert "cancelled" in cancelled.stdout
        # a dead job is listed in the DLQ, requeued with a passing payload, and completes
        dead = client.submit(
            "demo.pipeline",
            {"steps": [{"name": "x", "duration_s": 0, "fail_attempts": 99}]},
            max_attempts=1,
        )
        assert _errand(folder, "watch", dead["id"]).returncode == 1
        listed = _errand(folder, "dlq", "ls", "--type", "demo.pipeline")
        assert dead["id"] in listed.stdout, listed.stdout + listed.stderr
        passing = json.dumps({"steps": [{"name": "x", "duration_s": 0}]})
        requeued = _errand(folder, "dlq", "requeue", dead["id"], "--payload", passing)
        assert requeued.returncode == 0, requeued.stderr
        assert "requeued 1 jobs" in requeued.stdout
        done = _errand(folder, "watch", dead["id"])
        assert done.returncode == 0, done.stdout + done.stderr
        # retry of a completed job is refused with the API's reason
        refused = _errand(folder, "retry", dead["id"])
        assert refused.returncode == 1
        assert "409" in refused.stderr
