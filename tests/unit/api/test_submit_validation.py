"""Bad input gets 400/422 problem+json naming the field, and writes no row."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from errand.dev import DevSystem
from errand_schema.models import Job
from errand_schema.views import JobPublic


def _job_count(system: DevSystem) -> int:
    with Session(system.engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


def _assert_problem(resp: Any, status: int, field: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert {"type", "title", "status", "detail", "instance", "request_id"} <= set(body)
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body["errors"]
    return dict(body)


def test_malformed_json_is_400_and_writes_no_row(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    resp = api_client.post(
        "/v1/jobs",
        content=b'{"type": "demo.pipeline",',
        headers={"Content-Type": "application/json"},
    )
    body = _assert_problem(resp, 400, None)
    assert body["type"].endswith("/malformed_json")
    assert _job_count(dev_system) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "no.such.type"}, "type"),
        ({"type": "demo.pipeline", "payload": {"steps": [{"name": ""}]}}, "payload.steps.0.name"),
        ({"type": "demo.pipeline", "payload": {"steps": "four"}}, "payload.steps"),
        ({"type": "demo.pipeline", "payload": {"bogus": 1}}, "payload"),
        ({"type": "demo.pipeline", "priority": "urgent"}, "priority"),
        ({"type": "demo.pipeline", "max_attempts": 0}, "max_attempts"),
        ({"type": "demo.pipeline", "retry": {"strategy": "sometimes"}}, "retry.strategy"),
        ({"payload": {}}, "type"),
        ({"type": "demo.pipeline", "unknown_option": True}, "unknown_option"),
    ],
    ids=[
        "unknown-type",
        "empty-step-name",
        "steps-wrong-type",
        "extra-payload-field",
        "wrong-priority",
        "zero-attempts",
        "bad-retry",
        "missing-type",
        "unknown-option",
    ],
)
def test_invalid_submission_is_422_naming_the_field_and_writes_no_row(
    api_client: TestClient, dev_system: DevSystem, body: dict[str, Any], field: str
) -> None:
    resp = api_client.post("/v1/jobs", json=body)
    _assert_problem(resp, 422, field)
    assert _job_count(dev_system) == 0


def test_missing_or_wrong_key_is_401(api_client: TestClient) -> None:
    resp = api_client.post("/v1/jobs", json={"type": "noop"}, headers={"Authorization": ""})
    _assert_problem(resp, 401, None)
    resp = api_client.get(
        "/v1/jobs/00000000-0000-4000-8000-000000000000",
        headers={"Authorization": "Bearer erk_000000000000_nope"},
    )
    _assert_problem(resp, 401, None)


def test_accepted_job_is_202_with_location_and_a_queued_message(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    resp = api_client.post("/v1/jobs", json={"type": "demo.pipeline", "priority": "high"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    # Built by the route itself (errand_api.routes.jobs.as_json): the same document and
    # headers FastAPI would have sent for its response_model
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers.get_list("content-length") == [str(len(resp.content))]
    assert int(resp.headers["RateLimit-Remaining"]) >= 0
    assert JobPublic.model_validate(job).model_dump(mode="json", by_alias=True) == job
    assert job["status"] == "queued"
    assert job["priority"] == "high"
    assert job["seq"] == 1
    # The wake-up message carries only the job id, the step and the attempt
    queue = dev_system.broker.queues["default"]
    message = queue.get_nowait()
    assert message is not None
    assert b'"job_id":"' + job["id"].encode() + b'"' in message


def test_another_users_job_is_the_same_404_as_a_missing_one(
    api_client: TestClient, make_user: Any
) -> None:
    job = api_client.post("/v1/jobs", json={"type": "noop"}).json()
    other = {"Authorization": f"Bearer {make_user('mallory')}"}
    theirs = api_client.get(f"/v1/jobs/{job['id']}", headers=other)
    missing = api_client.get("/v1/jobs/00000000-0000-4000-8000-000000000000", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["type"] == missing.json()["type"]
    assert theirs.json()["detail"].replace(job["id"], "X") == missing.json()["detail"].replace(
        "00000000-0000-4000-8000-000000000000", "X"
    )


def test_oversized_body_is_413(api_client: TestClient, dev_system: DevSystem) -> None:
    big = {"type": "noop", "payload": {"blob": "x" * 2_000_000}}
    _assert_problem(api_client.post("/v1/jobs", json=big), 413, None)
    assert _job_count(dev_system) == 0


@pytest.mark.parametrize("depth", [40, 900, 5000])
def test_deeply_nested_payloads_get_4xx_and_write_no_row(
    api_client: TestClient, dev_system: DevSystem, depth: int
) -> None:
    body = '{"type": "noop", "payload": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    resp = api_client.post(
        "/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert _job_count(dev_system) == 0


def test_payload_over_the_payload_limit_is_422(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    dev_system.api.state.services.rules = dev_system.api.state.services.rules.__class__(
        max_payload_bytes=100, allow_private_urls=True, allowed_url_hosts=frozenset()
    )
    resp = api_client.post("/v1/jobs", json={"type": "noop", "payload": {"x": "y" * 200}})
    _assert_problem(resp, 422, "payload")
    assert _job_count(dev_system) == 0


def test_every_answer_carries_the_request_id_given_or_made(api_client: TestClient) -> None:
    given = api_client.get("/v1/jobs", headers={"X-Request-ID": "req-abc-123"})
    assert given.status_code == 200
    assert given.headers["X-Request-ID"] == "req-abc-123"
    made = api_client.post("/v1/jobs", json={"payload": {}})
    problem = _assert_problem(made, 422, "type")
    assert made.headers["X-Request-ID"] == problem["request_id"]
    assert len(problem["request_id"]) == 36  # a fresh UUID
