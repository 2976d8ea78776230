"""The step runner in-process (dev mode): steps, checkpoints, retries, dead letters."""

from fastapi.testclient import TestClient

from errand.dev import DevSystem

from helpers import wait_for
from inprocess import attempts as _attempts
from inprocess import events as _events
from inprocess import submit as _submit
from inprocess import wait_status as _final


def test_steps_run_in_order_and_outputs_reach_later_steps(
    running: TestClient, dev_system: DevSystem
) -> None:
    steps = [{"name": n, "duration_s": 0.02, "ticks": 2} for n in ("a", "b", "c")]
    job = _final(running, _submit(running, "demo.pipeline", {"steps": steps}))
    assert job["status"] == "completed"
    assert job["result"]["completed_steps"] == ["a", "b", "c"]
    events = _events(dev_system, job["id"])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "queued"
    assert events[-1].type == "completed"
    assert {e.actor.split(":")[0] for e in events} == {"user", "worker"}


def test_a_failed_attempt_is_recorded_and_retried_under_the_policy(
    running: TestClient, dev_system: DevSystem
) -> None:
    steps = [
        {"name": "ok", "duration_s": 0},
        {"name": "flaky", "duration_s": 0, "fail_attempts": 1},
    ]
    job_id = _submit(
        running, "demo.pipeline", {"steps": steps}, retry={"strategy": "fixed", "base_s": 0.1}
    )
    job = _final(running, job_id)
    assert job["status"] == "completed"
    attempts = _attempts(dev_system, job_id)
    assert [(a.step_index, a.attempt, a.outcome) for a in attempts] == [
        (0, 1, "completed"),
        (1, 1, "failed"),
        (1, 2, "completed"),
    ]
    assert attempts[1].error_type == "TransientError"
    assert "Traceback" in (attempts[1].traceback or "")
    # The checkpointed first step did not run again
    assert job["steps"][0]["attempts"] == 1
    assert job["steps"][1]["attempts"] == 2
    assert "retrying" in [e.type for e in _events(dev_system, job_id)]


def test_exhausted_attempts_make_the_job_dead_and_dead_letter_its_message(
    running: TestClient, dev_system: DevSystem
) -> None:
    steps = [{"name": "never", "duration_s": 0, "fail_attempts": 99}]
    job_id = _submit(
        running,
        "demo.pipeline",
        {"steps": steps},
        max_attempts=2,
        retry={"strategy": "fixed", "base_s": 0},
    )
    job = _final(running, job_id)
    assert job["status"] == "dead"
    assert job["error"]["type"] == "TransientError"
    assert len(_attempts(dev_system, job_id)) == 2
    dead_letters = wait_for(lambda: dev_system.broker.dead_letters, 5, what="a dead letter")
    assert any(job_id in str(m.args) for m in dead_letters)


def test_a_permanent_error_fails_the_job_without_retrying(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = _submit(running, "test.permanent")
    job = _final(running, job_id)
    assert job["status"] == "failed"
    assert job["error"]["reason"] == "permanent"
    assert len(_attempts(dev_system, job_id)) == 1


def test_a_step_spinning_past_its_timeout_is_interrupted(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = _submit(running, "test.spin", {"seconds": 30})
    job = _final(running, job_id, timeout_s=10)
    assert job["status"] == "dead"
    assert job["error"]["reason"] == "timeout"
    (attempt,) = _attempts(dev_system, job_id)
    assert attempt.outcome == "timeout"
    assert attempt.duration_ms is not None
    assert attempt.duration_ms < 3000
