"""``/readyz``: the database, the broker and Redis, or only those required."""

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_api.routes import health

K8S_BASE = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"


def test_all_up_is_ready(api_client: TestClient) -> None:
    answer = api_client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ready",
        "checks": {"database": True, "broker": True, "redis": True},
    }


def test_redis_down_fails_the_full_check_but_is_not_asked_by_the_probe(
    api_client: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def redis_down() -> bool:
        asked.append("redis")
        return False

    monkeypatch.setattr(dev_system.api.state.services, "redis_ping", redis_down)
    full = api_client.get("/readyz")
    assert full.status_code == 503
    assert full.json() == {
        "status": "unavailable",
        "checks": {"database": True, "broker": True, "redis": False},
    }
    assert asked == ["redis"]
    # What the Kubernetes readiness probe asks: the database alone, nothing else made
    probe = api_client.get("/readyz", params={"require": "database"})
    assert probe.status_code == 200
    assert probe.json() == {"status": "ready", "checks": {"database": True}}
    assert asked == ["redis"]
    # Several may be required (the parameter repeated)
    both = api_client.get("/readyz", params=[("require", "database"), ("require", "redis")])
    assert both.status_code == 503
    assert both.json()["checks"] == {"database": True, "redis": False}


def test_the_database_down_fails_the_probe(
    api_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_database_ok", lambda _services: False)
    probe = api_client.get("/readyz", params={"require": "database"})
    assert probe.status_code == 503
    assert probe.json() == {"status": "unavailable", "checks": {"database": False}}


def test_an_unknown_check_is_refused(api_client: TestClient) -> None:
    assert api_client.get("/readyz", params={"require": "coffee"}).status_code == 422


def test_the_api_deployments_readiness_probe_is_answered_200(api_client: TestClient) -> None:
    (deployment,) = [
        d
        for d in yaml.safe_load_all((K8S_BASE / "api.yaml").read_text())
        if d["kind"] == "Deployment"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    path = container["readinessProbe"]["httpGet"]["path"]
    assert "require=" in path, "the probe must not depend on the broker or Redis"
    assert api_client.get(path).status_code == 200
