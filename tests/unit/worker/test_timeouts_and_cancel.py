"""Timeouts (Python loop, blocking C call, child process) and cancellation, in dev mode."""

import os
from pathlib import Path

from fastapi.testclient import TestClient

from errand.dev import DevSystem

from helpers import wait_for
from inprocess import attempts, events, get, submit, wait_status

#: The issue's bound: a timed-out attempt ends within this long after its deadline.
DEADLINE_SLACK_S = 2.0


def _attempt_seconds(system: DevSystem, job_id: str) -> float:
    """Return how long the job's only attempt lasted (it must have timed out)."""
    (attempt,) = attempts(system, job_id)
    assert attempt.outcome == "timeout"
    assert attempt.finished_at is not None
    return (attempt.finished_at - attempt.started_at).total_seconds()


def test_a_python_loop_past_its_timeout_ends_the_attempt_with_timeout(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = submit(running, "test.spin", {"seconds": 30})
    job = wait_status(running, job_id)
    assert job["error"]["reason"] == "timeout"
    assert _attempt_seconds(dev_system, job_id) <= 1.0 + DEADLINE_SLACK_S


def test_a_step_blocked_in_sleep_is_timed_out_at_the_deadline_and_its_late_result_discarded(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    job_id = submit(running, "test.blocking", {"seconds": 4, "marker_dir": str(tmp_path)})
    job = wait_status(running, job_id)
    assert job["status"] == "dead"
    assert job["error"]["reason"] == "timeout"
    assert _attempt_seconds(dev_system, job_id) <= 1.0 + DEADLINE_SLACK_S
    # When the sleeping thread finally returns, its result is refused by the fence
    assert dev_system.runtime.watchdog.running_jobs() != []
    wait_for(
        lambda: dev_system.runtime.watchdog.running_jobs() == [],
        10,
        0.1,
        what="the blocked step's thread to return",
    )
    assert get(running, job_id)["status"] == "dead"
    assert get(running, job_id)["result"] is None


def test_an_isolated_step_stuck_in_c_is_killed_with_its_process_at_the_deadline(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    job_id = submit(running, "test.isolated", {"seconds": 60, "marker_dir": str(tmp_path)})
    job = wait_status(running, job_id, timeout_s=30)
    assert job["error"]["reason"] == "timeout"
    # (its timeout is 8 s: a spawned interpreter needs a moment to start on a busy machine)
    assert _attempt_seconds(dev_system, job_id) <= 8.0 + DEADLINE_SLACK_S
    pid = int((tmp_path / job_id).read_text().split("pid:")[1].split()[0])
    assert pid != os.getpid()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 5, what="the step's process to be gone")


def test_a_queued_job_that_is_cancelled_never_starts(
    dev_system: DevSystem, api_client: TestClient
) -> None:
    # Given a queued job and no worker running
    job_id = submit(api_client, "test.slow", {"ticks": 1, "tick_s": 0})
    # When it is cancelled, then the worker starts
    resp = api_client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled"
    dev_system.worker.start()
    wait_for(lambda: len(dev_system.broker.queues["default"].queue) == 0, 5, what="drained")
    dev_system.worker.join()
    # Then it never ran
    assert attempts(dev_system, job_id) == []
    assert get(api_client, job_id)["status"] == "cancelled"
    assert api_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_cancelling_a_running_job_stops_it_at_the_next_check_and_runs_the_hook(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    job_id = submit(
        running, "test.slow", {"ticks": 200, "tick_s": 0.02, "marker_dir": str(tmp_path)}
    )
    wait_for(
        lambda: get(running, job_id)["steps"][1]["status"] == "running", 30, what="step 2 to run"
    )
    assert running.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_status(running, job_id)
    assert job["status"] == "cancelled"
    assert job["step"] == "s2"
    ran = (tmp_path / f"ran-{job_id}").read_text().split()
    assert [r.split(":")[0] for r in ran] == ["s1", "s2"]
    assert (tmp_path / f"cancelled-{job_id}").read_text().split() == ["s2:1"]
    assert [s["status"] for s in job["steps"]] == ["completed"] + ["cancelled"] * 4
    assert events(dev_system, job_id)[-1].data == {"step": "s2"}


def test_a_handler_that_never_checks_is_interrupted_after_the_cancel_grace(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = submit(running, "test.spin", {"seconds": 30}, timeout_s=60)
    wait_status(running, job_id, {"running"})
    running.post(f"/v1/jobs/{job_id}/cancel")
    job = wait_status(running, job_id, timeout_s=10)
    assert job["status"] == "cancelled"
    (attempt,) = attempts(dev_system, job_id)
    assert attempt.outcome == "cancelled"


def test_async_steps_get_progress_and_complete(running: TestClient, dev_system: DevSystem) -> None:
    job_id = submit(running, "test.async", {"ticks": 3})
    job = wait_status(running, job_id)
    assert job["status"] == "completed"
    assert job["result"] == {"ticks": 3}
    assert [e.type for e in events(dev_system, job_id)].count("progress") == 6


def test_async_steps_time_out_and_cancel_like_plain_ones(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    slow = submit(running, "test.async", {"ticks": 1, "tick_s": 30})
    assert wait_status(running, slow)["error"]["reason"] == "timeout"
    job_id = submit(
        running,
        "test.async",
        {"ticks": 400, "tick_s": 0.002, "marker_dir": str(tmp_path)},
        timeout_s=30,
    )
    wait_status(running, job_id, {"running"})
    running.post(f"/v1/jobs/{job_id}/cancel")
    assert wait_status(running, job_id)["status"] == "cancelled"
    assert (tmp_path / job_id).read_text().startswith("cancelled:")
