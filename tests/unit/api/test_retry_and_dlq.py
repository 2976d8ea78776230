"""Retry from the unfinished step, the dead-letter queue, and its admin API."""

import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from errand.dev import DevSystem

from helpers import wait_for
from inprocess import attempts, events, get, submit, wait_status


def _ran(marker: Path) -> list[str]:
    return marker.read_text().split()


def test_retry_resumes_a_failed_job_from_the_step_that_did_not_finish(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    # Given a job dead at its second step (prepare completed once)
    job_id = submit(running, "test.flaky", {"marker_dir": str(tmp_path)}, max_attempts=1)
    assert wait_status(running, job_id)["status"] == "dead"
    assert _ran(tmp_path / job_id) == ["prepare:1", "call:1"]
    # When it is retried (still failing, with one attempt)
    resp = running.post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    assert wait_status(running, job_id)["status"] == "dead"
    # Then only the unfinished step ran again, with a fresh attempt budget
    assert _ran(tmp_path / job_id) == ["prepare:1", "call:1", "call:1"]
    # And from_start runs every step again
    running.post(f"/v1/jobs/{job_id}/retry", json={"from_start": True})
    wait_status(running, job_id)
    assert _ran(tmp_path / job_id)[3:] == ["prepare:1", "call:1"]


def test_only_finished_unsuccessful_jobs_can_be_retried(running: TestClient) -> None:
    job_id = submit(running, "noop")
    assert wait_status(running, job_id)["status"] == "completed"
    resp = running.post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 409
    assert resp.json()["type"].endswith("/job_not_retryable")


def test_a_dead_job_is_requeued_from_the_dlq_with_an_edited_payload_and_completes(
    running: TestClient, dev_system: DevSystem
) -> None:
    # Given a job that always fails ends dead, with its message dead-lettered
    job_id = submit(
        running,
        "test.flaky",
        {"pass_on": 0},
        max_attempts=2,
        retry={"strategy": "fixed", "base_s": 0},
    )
    assert wait_status(running, job_id)["status"] == "dead"
    wait_for(lambda: _dead_lettered(dev_system, job_id), 5, what="the message in the XQ")
    listed = running.get("/v1/admin/dlq", params={"type": "test.flaky", "error": "failed"})
    assert [j["id"] for j in listed.json()["data"]] == [job_id]
    assert running.get("/v1/admin/dlq", params={"type": "noop"}).json()["count"] == 0
    # When an admin requeues it with a payload that now passes
    resp = running.post(
        "/v1/admin/dlq/requeue", json={"job_ids": [job_id], "payload": {"pass_on": 1}}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["count"] == 1
    # Then it completes, the broker copy is gone, and the audit log shows each move
    assert wait_status(running, job_id)["status"] == "completed"
    assert not _dead_lettered(dev_system, job_id)
    moves = [(e.from_status, e.status) for e in events(dev_system, job_id) if e.from_status]
    assert moves == [
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "dead"),
        ("dead", "queued"),
        ("queued", "running"),
        ("running", "completed"),
    ]
    requeued = next(e for e in events(dev_system, job_id) if e.from_status == "dead")
    assert requeued.actor.startswith("user:")
    assert requeued.data is not None
    assert requeued.data["source"] == "dlq"
    assert requeued.data["edited_payload"] is True


def test_requeue_by_filter_and_purge_act_only_on_matching_dead_jobs(
    running: TestClient, dev_system: DevSystem
) -> None:
    dead = [submit(running, "test.flaky", {}, max_attempts=1) for _ in range(3)]
    other = submit(running, "test.permanent")
    for job_id in dead:
        wait_status(running, job_id)
    wait_status(running, other)
    resp = running.post("/v1/admin/dlq/requeue", json={"type": "test.flaky"})
    assert sorted(resp.json()["job_ids"]) == sorted(dead)
    for job_id in dead:
        assert wait_status(running, job_id)["status"] == "dead"
    assert running.post("/v1/admin/dlq/purge", json={}).status_code == 422
    purged = running.post("/v1/admin/dlq/purge", json={"job_ids": dead[:2]}).json()
    assert purged["count"] == 2
    assert running.get(f"/v1/jobs/{dead[0]}").status_code == 404
    assert get(running, dead[2])["status"] == "dead"
    assert get(running, other)["status"] == "failed"
    assert running.post("/v1/admin/dlq/purge", json={"all": True}).json()["count"] == 1


def test_an_edited_payload_is_checked_against_the_schema(running: TestClient) -> None:
    job_id = submit(running, "test.flaky", {}, max_attempts=1)
    wait_status(running, job_id)
    resp = running.post(
        "/v1/admin/dlq/requeue", json={"job_ids": [job_id], "payload": {"pass_on": "soon"}}
    )
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "payload.pass_on"
    assert get(running, job_id)["status"] == "dead"


def test_dlq_endpoints_are_for_admins_only(api_client: TestClient, make_user: Any) -> None:
    user = {"Authorization": f"Bearer {make_user('not-admin')}"}
    assert api_client.get("/v1/admin/dlq", headers=user).status_code == 403
    assert (
        api_client.post("/v1/admin/dlq/purge", json={"all": True}, headers=user).status_code == 403
    )


def test_a_user_cannot_cancel_or_retry_another_users_job(
    api_client: TestClient, make_user: Any, dev_system: DevSystem
) -> None:
    job_id = submit(api_client, "noop")
    other = {"Authorization": f"Bearer {make_user('eve')}"}
    for action in ("cancel", "retry"):
        assert api_client.post(f"/v1/jobs/{job_id}/{action}", headers=other).status_code == 404
    for view in ("attempts", "events"):
        assert api_client.get(f"/v1/jobs/{job_id}/{view}", headers=other).status_code == 404
    assert attempts(dev_system, job_id) == []


def _dead_lettered(system: DevSystem, job_id: str) -> bool:
    return any(
        uuid.UUID(m.args[0]["job_id"]) == uuid.UUID(job_id) for m in system.broker.dead_letters
    )
