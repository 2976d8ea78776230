"""Start and finish estimates: learned from recent runs, refreshed by progress events."""

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_schema import estimates

from inprocess import events, submit, wait_status

#: Each synthetic job sleeps this long in its one step. The estimate learns the step's
#: own duration; the claim and completion around it (tens of milliseconds, more under a
#: loaded CI with coverage) are the error, so the nap must dwarf them as real jobs do.
NAP_S = 0.6


@pytest.fixture(autouse=True)
def _history_read_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A type's incomplete history is read again on every request here. In service it
    is read again after 20x its read's duration, which a loaded CI machine stretches to
    seconds (the first jobs' history then shows late); that policy has its own tests
    (tests/integration/test_estimator_reads.py), these are about the estimates."""
    monkeypatch.setattr(estimates, "REREAD_FACTOR", 0.0)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_estimates_on_a_steady_workload_land_within_25_percent_for_most_jobs(
    running: TestClient, dev_system: DevSystem
) -> None:
    # Given a history of the type (no history: no estimate, not a guess)
    first = running.post("/v1/jobs", json={"type": "flow.nap", "payload": {"seconds": NAP_S}})
    assert first.json()["estimated_finish_at"] is None
    warm = [submit(running, "flow.nap", {"seconds": NAP_S}) for _ in range(4)]
    for job_id in [first.json()["id"], *warm]:
        wait_status(running, job_id)
    # When a steady stream of 12 jobs arrives (2 worker threads)
    submitted = []
    for _ in range(12):
        resp = running.post("/v1/jobs", json={"type": "flow.nap", "payload": {"seconds": NAP_S}})
        job = resp.json()
        assert job["estimated_finish_at"] is not None
        assert job["steps"][0]["expected_s"] is not None
        submitted.append(job)
    # Then most finish within 25% of the estimate given at submission
    errors = []
    for job in submitted:
        done = wait_status(running, job["id"])
        took = (_at(done["finished_at"]) - _at(job["created_at"])).total_seconds()
        missed = abs((_at(done["finished_at"]) - _at(job["estimated_finish_at"])).total_seconds())
        errors.append(missed / took)
    within = sum(e <= 0.25 for e in errors)
    assert within >= 0.8 * len(errors), sorted(round(e, 2) for e in errors)


def test_a_running_job_has_a_finish_estimate_and_progress_events_refresh_it(
    running: TestClient, dev_system: DevSystem
) -> None:
    payload = {"steps": 5, "ticks": 4, "tick_s": 0.03}
    wait_status(running, submit(running, "test.slow", payload))
    job_id = submit(running, "test.slow", payload)
    view = wait_status(running, job_id, {"running"})
    assert view["estimated_finish_at"] is not None
    assert all(step["expected_s"] for step in view["steps"])
    wait_status(running, job_id)
    progress = [e for e in events(dev_system, job_id) if e.type == "progress"]
    assert progress
    assert all(e.data and e.data.get("estimated_finish_at") for e in progress)
    finished = wait_status(running, job_id)
    assert finished["estimated_finish_at"] is None  # over: nothing to estimate
