"""Metrics and logs of the real processes: every /metrics parses and moves, every log
line is JSON, and lines about a job carry its id and trace."""

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from errand.client import ErrandClient

from helpers import wait_for

pytestmark = pytest.mark.integration


def _counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_each_service_exports_metrics_that_move_with_the_workload(system: Any) -> None:
    key = system.make_user("metrics")
    noop = {"type": "noop", "queue": "default"}
    worker_url = system.worker_metrics_url
    wait_for(
        lambda: httpx.get(f"{worker_url}/metrics", timeout=2).status_code == 200,
        30,
        0.2,
        what="the worker's metrics port",
    )
    before = {
        "submitted": _counter(system.api_url, "errand_jobs_submitted_total", **noop),
        "completed": _counter(worker_url, "errand_jobs_completed_total", **noop),
        "relayed": _counter(system.notifier_url, "errand_events_relayed_total", type="completed"),
    }
    with ErrandClient(system.api_url, key) as client:
        ids = [client.submit("noop")["id"] for _ in range(4)]
        wait_for(
            lambda: all(client.get(i)["status"] == "completed" for i in ids),
            30,
            0.1,
            what="the jobs to complete",
        )
    assert (
        _counter(system.api_url, "errand_jobs_submitted_total", **noop) - before["submitted"] == 4
    )
    # Worker processes add up their counters behind one port. At least: this session's
    # system is shared, and an earlier test's job may complete inside this window.
    wait_for(
        lambda: (
            _counter(worker_url, "errand_jobs_completed_total", **noop) - before["completed"] >= 4
        ),
        10,
        0.2,
        what="the worker's completed counter",
    )
    wait_for(
        lambda: (
            _counter(system.notifier_url, "errand_events_relayed_total", type="completed")
            - before["relayed"]
            >= 4
        ),
        10,
        0.2,
        what="the notifier's relay counter",
    )


def test_every_log_line_is_json_and_job_lines_carry_the_job_id(system: Any) -> None:
    key = system.make_user("logs")
    with ErrandClient(system.api_url, key) as client:
        job = client.submit("demo.pipeline", {"steps": [{"name": "one", "duration_s": 0}]})
        wait_for(lambda: client.get(job["id"])["status"] == "completed", 30, 0.1, what="the job")
    for name, proc in system.processes.items():
        lines = [line for line in proc.log().splitlines() if line.strip()]
        assert lines, name
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{name} wrote a line that is not JSON: {line[:200]}")
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records), name
    worker_lines = [
        json.loads(line)
        for line in system.processes["worker"].log().splitlines()
        if job["id"] in line
    ]
    assert any(r.get("job_id") == job["id"] and r.get("step") == "one" for r in worker_lines)
