"""``/readyz``: every dependency reported; the status code decided by those required."""

import pytest
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_api.routes import health


def test_all_up_is_ready(api_client: TestClient) -> None:
    answer = api_client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ready",
        "checks": {"database": True, "broker": True, "redis": True},
    }


def test_redis_down_fails_the_full_check_but_not_one_that_requires_the_database(
    api_client: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = dev_system.api.state.services
    monkeypatch.setattr(services, "redis_ping", lambda: False)
    full = api_client.get("/readyz")
    assert full.status_code == 503
    assert full.json()["status"] == "unavailable"
    assert full.json()["checks"]["redis"] is False
    # What the Kubernetes readiness probe asks: the database alone decides
    probe = api_client.get("/readyz", params={"require": "database"})
    assert probe.status_code == 200
    assert probe.json()["status"] == "degraded"
    assert probe.json()["checks"] == {"database": True, "broker": True, "redis": False}
    # Several may be required (the parameter repeated)
    both = api_client.get("/readyz", params=[("require", "database"), ("require", "redis")])
    assert both.status_code == 503


def test_the_database_down_fails_even_the_narrow_check(
    api_client: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_database_ok", lambda _services: False)
    probe = api_client.get("/readyz", params={"require": "database"})
    assert probe.status_code == 503
    assert probe.json()["status"] == "unavailable"


def test_an_unknown_check_is_refused(api_client: TestClient) -> None:
    assert api_client.get("/readyz", params={"require": "coffee"}).status_code == 422
