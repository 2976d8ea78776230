"""/metrics parses as Prometheus text and the counters move by a known workload."""

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from errand.dev import DevSystem

from helpers import wait_for
from inprocess import submit, wait_status


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_the_workload(running: TestClient, dev_system: DevSystem) -> None:
    before = _samples(running)
    done = [submit(running, "noop") for _ in range(3)]
    dead = submit(running, "test.flaky", {}, max_attempts=2, retry={"strategy": "none"})
    for job_id in [*done, dead]:
        wait_status(running, job_id)
    noop = {"type": "noop", "queue": "default"}
    flaky = {"type": "test.flaky", "queue": "default"}

    def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        after = _samples(running)
        done_now = _value(after, "errand_jobs_completed_total", **noop)
        all_done = done_now - _value(before, "errand_jobs_completed_total", **noop) == 3
        # (queue gauges are read from the database at most every 2 s)
        return after if all_done and _value(after, "errand_dlq_depth", queue="default") else None

    after = wait_for(moved, 10, 0.1, what="the completed counter")

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("errand_jobs_submitted_total", **noop) == 3
    assert delta("errand_jobs_started_total", **noop) == 3
    assert delta("errand_jobs_submitted_total", **flaky) == 1
    assert delta("errand_jobs_dead_total", **flaky) == 1
    assert delta("errand_jobs_started_total", **flaky) == 2  # prepare, then call once
    assert delta("errand_step_duration_seconds_count", **noop) == 3
    assert delta("errand_events_relayed_total", type="completed") >= 3
    assert _value(after, "errand_dlq_depth", queue="default") >= 1
    assert delta("errand_http_requests_total", method="POST", route="/v1/jobs", status="202") == 4
    assert ("errand_socketio_rooms", ()) in after
