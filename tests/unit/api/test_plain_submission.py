"""The plain ``POST /v1/jobs`` answered around FastAPI's routing and dependencies
(errand_api.fastpath): the same answers, errors included, and everything else left to
FastAPI."""

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_api import deps, fastpath, main, metrics
from errand_api.routes import jobs


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job types submitted on the plain path, from now on."""
    seen: list[str] = []
    original = fastpath._submit

    def noting(services: Any, principal: Any, limits: Any, job: Any) -> Any:
        seen.append(job.type)
        return original(services, principal, limits, job)

    monkeypatch.setattr(fastpath, "_submit", noting)
    return seen


JSON = "application/json"


def _headers(resp: httpx.Response) -> set[str]:
    return {name.lower() for name in resp.headers} - {"date"}


def _problem(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert resp.headers["content-type"] == "application/problem+json"
    assert body.pop("request_id")
    return dict(body)


def test_a_plain_submission_is_answered_as_fastapi_answers_it_without_its_dependencies(
    api_client: TestClient, make_user: Callable[..., str], plain: list[str]
) -> None:
    key = {"Authorization": f"Bearer {make_user('pia')}"}
    route = metrics.HTTP_REQUESTS.labels("POST", "/v1/jobs", "202")
    before = route._value.get()
    # The key's first request is FastAPI's (it is not in memory yet)
    first = api_client.post("/v1/jobs", json={"type": "noop", "labels": {"a": "1"}}, headers=key)
    assert plain == []
    # The next one takes the plain path
    second = api_client.post("/v1/jobs", json={"type": "noop", "labels": {"a": "1"}}, headers=key)
    assert plain == ["noop"]
    assert first.status_code == second.status_code == 202
    assert _headers(first) == _headers(second)
    assert second.headers["content-type"] == "application/json"
    assert second.headers["location"] == f"/v1/jobs/{second.json()['id']}"
    a, b = first.json(), second.json()
    assert a.keys() == b.keys()
    assert {k: v for k, v in b.items() if k not in ("id", "created_at", "updated_at")} == {
        k: v for k, v in a.items() if k not in ("id", "created_at", "updated_at")
    }
    # The job is there, and the HTTP metrics name the route for both
    assert api_client.get(f"/v1/jobs/{b['id']}", headers=key).json()["labels"] == {"a": "1"}
    assert route._value.get() - before == 2


def test_errors_on_the_plain_path_are_the_same_problems(
    api_client: TestClient,
    dev_system: DevSystem,
    make_user: Callable[..., str],
    plain: list[str],
) -> None:
    key = {"Authorization": f"Bearer {make_user('quin')}"}
    cache = dev_system.api.state.services.auth_cache
    assert cache is not None
    unknown = {"type": "no.such.type"}
    # Raised by the route's own function: through FastAPI (key not in memory) ...
    slow = api_client.post("/v1/jobs", json=unknown, headers=key)
    assert plain == []
    # ... and on the plain path
    fast = api_client.post("/v1/jobs", json=unknown, headers=key)
    assert plain == ["no.such.type"]
    assert fast.status_code == slow.status_code == 422
    assert _problem(fast) == _problem(slow)


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"type": "noop", "nope": 1}', {"Content-Type": JSON}, 422),  # not a JobCreate
        (b'{"type": "noop"', {"Content-Type": JSON}, 400),  # not JSON
        (b'{"type": "noop"}', {"Content-Type": "text/plain"}, 422),  # not read as JSON
        (b'{"type": "noop"}', {}, 422),  # no type: FastAPI does not read it as JSON
        (b'{"type": "noop"}', {"Content-Type": "application/x+json"}, 202),  # read as JSON
        (b'{"type": "noop"}', {"Content-Type": JSON, "Idempotency-Key": "k-1"}, 202),
    ],
)
def test_anything_but_the_plain_case_is_left_to_fastapi_with_its_body(
    api_client: TestClient,
    dev_system: DevSystem,
    make_user: Callable[..., str],
    plain: list[str],
    content: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    key = {"Authorization": f"Bearer {make_user('ray')}"}
    cache = dev_system.api.state.services.auth_cache
    assert cache is not None
    assert api_client.post("/v1/jobs", json={"type": "noop"}, headers=key).status_code == 202
    plain.clear()
    # The key is in memory, yet the request is FastAPI's, answered as without the path
    answers = []
    for _ in range(2):
        resp = api_client.post("/v1/jobs", content=content, headers={**key, **headers})
        answers.append((resp.status_code, resp.headers["content-type"]))
        cache.clear()  # the second request: the key not in memory either
    assert plain == []
    assert answers[0] == answers[1]
    assert answers[0][0] == status


def test_without_a_key_in_memory_or_with_another_method_fastapi_answers(
    api_client: TestClient, plain: list[str]
) -> None:
    no_key = api_client.post("/v1/jobs", json={"type": "noop"}, headers={"Authorization": ""})
    assert no_key.status_code == 401
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert api_client.get("/v1/jobs").status_code == 200
    assert plain == []


def test_the_route_has_no_dependency_the_plain_path_would_skip(dev_system: DevSystem) -> None:
    # The plain path gives the route's function its parameters itself: a dependency
    # added to the route, its router or the app would be skipped there.
    route = main._submit_route()
    assert route.dependencies == []
    assert jobs.router.dependencies == []
    assert dev_system.api.router.dependencies == []
    assert {d.call for d in route.dependant.dependencies} == {
        deps.get_session,
        deps.get_services,
        deps.get_principal,
    }


def test_a_deeply_nested_body_is_left_to_fastapi(
    api_client: TestClient, make_user: Callable[..., str], plain: list[str]
) -> None:
    key = {"Authorization": f"Bearer {make_user('sal')}"}
    assert api_client.post("/v1/jobs", json={"type": "noop"}, headers=key).status_code == 202
    nested = b'{"type": "noop", "payload": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    resp = api_client.post(
        "/v1/jobs", content=nested, headers={**key, "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert plain == []
