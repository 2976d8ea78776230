"""JWT bearer tokens from a configured issuer (shared secret)."""

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from errand.dev import build_dev_system

ISSUER = "https://login.example.test"
SECRET = "jwt-shared-secret-for-tests-0123456789"


def _token(
    sub: str, *, exp_in: float = 60, iss: str = ISSUER, key: str = SECRET, role: str | None = None
) -> str:
    claims = {"sub": sub, "iss": iss, "exp": int(time.time() + exp_in)}
    if role:
        claims["errand_role"] = role
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.fixture
def jwt_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The in-process system with a JWT issuer configured."""
    monkeypatch.setenv("ERRAND_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("ERRAND_JWT_SECRET", SECRET)
    system = build_dev_system(tmp_path / "dev", threads=1)
    with TestClient(system.app) as client:
        yield client
    system.close()


def _get(client: TestClient, token: str) -> int:
    return client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_valid_token_from_the_issuer_is_a_user_created_on_first_sight(
    jwt_client: TestClient,
) -> None:
    token = _token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    job = jwt_client.post("/v1/jobs", json={"type": "noop"}, headers=headers)
    assert job.status_code == 202
    assert jwt_client.get(f"/v1/jobs/{job.json()['id']}", headers=headers).status_code == 200
    # the same subject is the same user next time
    assert jwt_client.get("/v1/jobs", headers=headers).json()["count"] == 1
    assert _get(jwt_client, _token("bob")) == 200
    other = jwt_client.get(
        f"/v1/jobs/{job.json()['id']}", headers={"Authorization": f"Bearer {_token('bob')}"}
    )
    assert other.status_code == 404


@pytest.mark.parametrize(
    "token",
    [
        _token("x", exp_in=-10),
        _token("x", iss="https://evil.test"),
        _token("x", key="another-secret-another-secret-00"),
        "a.b.c",
    ],
    ids=["expired", "wrong-issuer", "wrong-key", "garbage"],
)
def test_invalid_tokens_are_refused(jwt_client: TestClient, token: str) -> None:
    assert _get(jwt_client, token) == 401


def test_the_role_claim_grants_admin(jwt_client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {_token('ops', role='admin')}"}
    user = {"Authorization": f"Bearer {_token('dev')}"}
    assert jwt_client.get("/v1/admin/users", headers=admin).status_code == 200
    assert jwt_client.get("/v1/admin/users", headers=user).status_code == 403
