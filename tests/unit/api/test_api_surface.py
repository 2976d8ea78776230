"""Listing and search, batches, stats, keys and roles, rate limits and callbacks (dev mode)."""

import concurrent.futures
from collections.abc import Callable
from typing import Any

from anyio.to_thread import current_default_thread_limiter
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from errand.dev import DevSystem
from errand_schema.models import Job

from inprocess import submit, wait_status


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [j["id"] for j in resp.json()["data"]]


def test_filters_and_search_return_exactly_the_matching_jobs(
    api_client: TestClient, make_user: Any
) -> None:
    noops = [submit(api_client, "noop") for _ in range(3)]
    demos = [submit(api_client, "demo.pipeline", priority="high") for _ in range(2)]
    theirs = {"Authorization": f"Bearer {make_user('other-user')}"}
    submit_other = api_client.post("/v1/jobs", json={"type": "noop"}, headers=theirs)
    assert submit_other.status_code == 202
    me = api_client.get(f"/v1/jobs/{noops[0]}").json()["owner"]
    mine = api_client.get("/v1/jobs", params={"type": "noop", "owner": me})
    assert sorted(_ids(mine)) == sorted(noops)
    assert sorted(_ids(api_client.get("/v1/jobs", params={"priority": "high"}))) == sorted(demos)
    assert _ids(api_client.get("/v1/jobs", params={"q": demos[0]})) == [demos[0]]
    assert sorted(_ids(api_client.get("/v1/jobs", params={"q": "pipeline"}))) == sorted(demos)
    # A user sees only their own jobs
    assert _ids(api_client.get("/v1/jobs", headers=theirs)) == [submit_other.json()["id"]]
    assert api_client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_cursor_pages_cover_every_job_once_even_while_jobs_are_inserted(
    api_client: TestClient,
) -> None:
    first = [submit(api_client, "noop") for _ in range(7)]
    seen: list[str] = []
    cursor = None
    inserted = []
    while True:
        params: dict[str, Any] = {"limit": 3, "type": "noop"}
        if cursor:
            params["cursor"] = cursor
        page = api_client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        inserted.append(submit(api_client, "noop"))  # lands before the cursor: not re-listed
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(first)
    assert len(seen) == len(set(seen))
    bad = api_client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "cursor"


def test_a_batch_is_created_whole_or_not_at_all(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    good = {"jobs": [{"type": "noop"}, {"type": "demo.pipeline"}]}
    resp = api_client.post("/v1/jobs:batch", json=good)
    assert resp.status_code == 202, resp.text
    assert resp.json()["count"] == 2
    before = _count(dev_system)
    bad = {"jobs": [{"type": "noop"}, {"type": "demo.pipeline", "payload": {"steps": 3}}]}
    resp = api_client.post("/v1/jobs:batch", json=bad)
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "jobs.1.payload.steps"
    too_many = {"jobs": [{"type": "noop"}] * 101}
    assert api_client.post("/v1/jobs:batch", json=too_many).status_code == 422
    assert _count(dev_system) == before


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    body = {"type": "noop", "payload": {"order": 42}}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: api_client.post("/v1/jobs", json=body, headers=headers), range(20))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert _count(dev_system) == 1
    other = api_client.post("/v1/jobs", json={**body, "payload": {"order": 43}}, headers=headers)
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency_conflict")


def test_stats_count_by_queue_and_type_for_the_caller(running: TestClient, make_user: Any) -> None:
    for job_id in [submit(running, "noop") for _ in range(3)]:
        wait_status(running, job_id)
    stats = running.get("/v1/stats").json()
    assert stats["scope"] == "all"
    (noop,) = [row for row in stats["data"] if row["type"] == "noop"]
    assert noop["completed_last_minute"] == 3
    assert noop["duration_p50_ms"] is not None
    mine = running.get("/v1/stats", headers={"Authorization": f"Bearer {make_user('s')}"})
    assert mine.json() == {"scope": "own", "data": []}


def test_a_revoked_key_is_refused_at_once_and_admin_routes_need_the_admin_role(
    api_client: TestClient,
) -> None:
    created = api_client.post("/v1/admin/users", json={"name": "kim"})
    assert created.status_code == 201, created.text
    kim = {"Authorization": f"Bearer {created.json()['key']}"}
    assert api_client.get("/v1/jobs", headers=kim).status_code == 200
    assert api_client.get("/v1/admin/users", headers=kim).status_code == 403
    second = api_client.post("/v1/keys", json={"name": "ci"}, headers=kim).json()
    keys = api_client.get("/v1/keys", headers=kim).json()
    assert {k["name"] for k in keys} == {"default", "ci"}
    assert all("key" not in k and "secret_hash" not in k for k in keys)
    assert api_client.delete(f"/v1/keys/{second['id']}", headers=kim).status_code == 204
    revoked = {"Authorization": f"Bearer {second['key']}"}
    assert api_client.get("/v1/jobs", headers=revoked).status_code == 401


def test_submissions_past_the_rate_limit_get_429_with_retry_after(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    created = api_client.post("/v1/admin/users", json={"name": "slow", "rate_limit_per_s": 0.001})
    slow = {"Authorization": f"Bearer {created.json()['key']}"}
    burst = dev_system.api.state.services.settings.rate_limit_burst
    statuses = [
        api_client.post("/v1/jobs", json={"type": "noop"}, headers=slow).status_code
        for _ in range(burst + 1)
    ]
    assert statuses[:burst] == [202] * burst
    assert statuses[burst] == 429
    refused = api_client.post("/v1/jobs", json={"type": "noop"}, headers=slow)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_a_callback_to_a_private_address_is_refused_unless_allowed(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    services = dev_system.api.state.services
    services.rules = services.rules.__class__(
        max_payload_bytes=services.rules.max_payload_bytes,
        allow_private_urls=False,
        allowed_url_hosts=frozenset(),
    )
    for url in (
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/x",
        "http://localhost/x",
        "ftp://example.com/x",
    ):
        resp = api_client.post("/v1/jobs", json={"type": "noop", "callback_url": url})
        assert resp.status_code == 422, url
        assert resp.json()["errors"][0]["field"] == "callback_url"
    ok = api_client.post(
        "/v1/jobs", json={"type": "noop", "callback_url": "https://93.184.216.34/hook"}
    )
    assert ok.status_code == 202


def _count(system: DevSystem) -> int:
    with Session(system.engine) as s:
        return int(s.exec(select(func.count()).select_from(Job)).one())


def test_sensitive_payload_fields_are_masked_outside_the_owners_own_read(
    api_client: TestClient, make_user: Callable[..., str]
) -> None:
    payload = {"user": "ann", "password": "hunter2", "nested": [{"Api_Key": "k"}]}
    job_id = submit(api_client, "noop", payload)
    assert api_client.get(f"/v1/jobs/{job_id}").json()["payload"] == payload
    (listed,) = api_client.get("/v1/jobs", params={"q": job_id}).json()["data"]
    masked = {"user": "ann", "password": "***", "nested": [{"Api_Key": "***"}]}
    assert listed["payload"] == masked
    # An admin reading another user's job sees it masked too
    other = make_user("payload-owner")
    theirs = api_client.post(
        "/v1/jobs",
        json={"type": "noop", "payload": payload},
        headers={"Authorization": f"Bearer {other}"},
    ).json()["id"]
    assert api_client.get(f"/v1/jobs/{theirs}").json()["payload"] == masked


def test_blocking_handlers_share_the_configured_number_of_threads(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    # The API's lifespan sized the event loop's thread pool from ERRAND_REQUEST_THREADS
    # (its sync routes and dependencies run there).
    configured = dev_system.api.state.services.settings.request_threads
    assert configured == 8
    portal = api_client.portal
    assert portal is not None
    assert portal.call(lambda: current_default_thread_limiter().total_tokens) == configured
