"""The hot path (Core statements) on SQLite claims and completes steps exactly as the
general (ORM) path does; unusual cases fall back (:mod:`hotpath_cases`; the same checks
run on PostgreSQL in ``tests/integration/test_hotpath_postgres.py``)."""

import pytest
from fastapi.testclient import TestClient
from hotpath_cases import (
    JOBS,
    check_a_cancel_during_a_step_takes_the_general_path,
    check_a_claim_run_again_finds_its_own_lease,
    check_a_completion_run_again_finds_its_own_write,
    check_same_rows_as_the_general_path,
)

from errand.dev import DevSystem


@pytest.mark.parametrize("job_type", sorted(JOBS))
def test_the_hot_path_writes_what_the_general_path_writes(
    running: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch, job_type: str
) -> None:
    check_same_rows_as_the_general_path(running, dev_system, monkeypatch, job_type)


def test_a_cancel_requested_during_a_step_takes_the_general_path_at_its_end(
    running: TestClient, dev_system: DevSystem
) -> None:
    check_a_cancel_during_a_step_takes_the_general_path(running, dev_system)


def test_a_completion_run_again_after_a_lost_reply_finds_its_own_write(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    check_a_completion_run_again_finds_its_own_write(api_client, dev_system)


@pytest.mark.parametrize("job_type", sorted(JOBS))
def test_a_claim_run_again_after_a_lost_reply_takes_its_own_lease(
    api_client: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch, job_type: str
) -> None:
    check_a_claim_run_again_finds_its_own_lease(
        api_client, dev_system, monkeypatch, job_type, JOBS[job_type]
    )
