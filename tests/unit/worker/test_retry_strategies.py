"""Each retry strategy waits what it promises, measured from the recorded attempts."""

import itertools
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_schema.retry import RetryPolicy

from inprocess import attempts, events, submit, wait_status

#: Scheduling slack on top of a promised delay (poll intervals, a busy 2-core machine).
SLACK_S = 1.0


def _delays(system: DevSystem, job_id: str) -> list[float]:
    rows = [a for a in attempts(system, job_id) if a.step_index == 1]
    return [
        (later.started_at - earlier.finished_at).total_seconds()
        for earlier, later in itertools.pairwise(rows)
        if earlier.finished_at is not None
    ]


@pytest.mark.parametrize(
    ("policy", "bounds"),
    [
        ({"strategy": "fixed", "base_s": 0.3}, lambda n: (0.3, 0.3)),
        ({"strategy": "linear", "base_s": 0.2}, lambda n: (0.2 * n, 0.2 * n)),
        (
            {"strategy": "exponential", "base_s": 0.2, "factor": 2, "jitter": False},
            lambda n: (0.2 * 2 ** (n - 1), 0.2 * 2 ** (n - 1)),
        ),
        (
            {"strategy": "exponential", "base_s": 0.2, "factor": 2, "cap_s": 0.5},
            lambda n: (0.0, min(0.5, 0.2 * 2 ** (n - 1))),
        ),
    ],
    ids=["fixed", "linear", "exponential", "exponential-jitter-capped"],
)
def test_each_strategy_waits_the_promised_delay_between_attempts(
    running: TestClient, dev_system: DevSystem, policy: dict[str, Any], bounds: Any
) -> None:
    job_id = submit(running, "test.flaky", {"pass_on": 0}, retry=policy, max_attempts=4)
    job = wait_status(running, job_id, timeout_s=30)
    assert job["status"] == "dead"
    delays = _delays(dev_system, job_id)
    assert len(delays) == 3
    for n, delay in enumerate(delays, start=1):
        low, high = bounds(n)
        assert low - 0.05 <= delay <= high + SLACK_S, (n, delay, policy)


def test_none_strategy_and_permanent_errors_do_not_retry(
    running: TestClient, dev_system: DevSystem
) -> None:
    once = submit(running, "test.flaky", {}, retry={"strategy": "none"}, max_attempts=5)
    permanent = submit(running, "test.permanent")
    assert wait_status(running, once)["status"] == "dead"
    assert wait_status(running, permanent)["status"] == "failed"
    assert len([a for a in attempts(dev_system, once) if a.step_index == 1]) == 1
    assert len(attempts(dev_system, permanent)) == 1


def test_the_retry_event_announces_the_delay(running: TestClient, dev_system: DevSystem) -> None:
    job_id = submit(
        running, "test.flaky", {"pass_on": 2}, retry={"strategy": "fixed", "base_s": 0.25}
    )
    assert wait_status(running, job_id)["status"] == "completed"
    (retrying,) = [e for e in events(dev_system, job_id) if e.type == "retrying"]
    assert retrying.data is not None
    assert retrying.data["delay_s"] == 0.25
    assert retrying.data["step"] == "call"


def test_attempts_are_listed_with_error_traceback_and_duration(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = submit(running, "test.flaky", {"pass_on": 2}, retry={"strategy": "fixed", "base_s": 0})
    assert wait_status(running, job_id)["status"] == "completed"
    listed = running.get(f"/v1/jobs/{job_id}/attempts").json()
    assert [(a["step"], a["attempt"], a["outcome"]) for a in listed] == [
        ("prepare", 1, "completed"),
        ("call", 1, "failed"),
        ("call", 2, "completed"),
        ("finish", 1, "completed"),
    ]
    failed = listed[1]
    assert failed["error_type"] == "TransientError"
    assert failed["error_message"] == "attempt 1 failed"
    assert "Traceback" in failed["traceback"]
    assert failed["duration_ms"] >= 0


@pytest.mark.parametrize("seed", range(5))
def test_full_jitter_stays_within_zero_and_the_capped_ceiling(seed: int) -> None:
    policy = RetryPolicy(strategy="exponential", base_s=1, factor=3, cap_s=20)
    rng = random.Random(seed)
    for n in range(1, 8):
        delay = policy.delay_s(n, rng)
        assert delay is not None
        assert 0 <= delay <= min(20, 3 ** (n - 1))


class TestLongDelays:
    """Delays above broker_delay_max_s wait in PostgreSQL, released by the reconciler."""

    @pytest.fixture
    def worker_options(self) -> dict[str, Any]:
        from unit_options import TEST_WORKER_OPTIONS

        return {**TEST_WORKER_OPTIONS, "broker_delay_max_s": 0.1}

    def test_a_long_retry_delay_is_held_in_the_database_and_still_runs(
        self, running: TestClient, dev_system: DevSystem
    ) -> None:
        job_id = submit(
            running, "test.flaky", {"pass_on": 2}, retry={"strategy": "fixed", "base_s": 0.5}
        )
        assert wait_status(running, job_id)["status"] == "completed"
        (delay,) = _delays(dev_system, job_id)
        assert 0.45 <= delay <= 0.5 + SLACK_S
