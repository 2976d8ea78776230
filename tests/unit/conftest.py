"""Unit-test fixtures: a migrated SQLite database, users, and the in-process system."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from errand.dev import DevSystem, build_dev_system
from errand_schema.auth import create_user

from inprocess import admin_client
from unit_options import TEST_WORKER_OPTIONS


@pytest.fixture
def worker_options() -> dict[str, Any]:
    """Worker settings for ``dev_system``; override the fixture to change them."""
    return dict(TEST_WORKER_OPTIONS)


@pytest.fixture
def dev_system(tmp_path: Path, worker_options: dict[str, Any]) -> Iterator[DevSystem]:
    """The whole system in-process (dev mode), worker threads not started."""
    system = build_dev_system(
        tmp_path / "dev",
        threads=2,
        job_modules=["sample_jobs", "engine_jobs", "flow_jobs"],
        worker_options=worker_options,
    )
    yield system
    system.close()


@pytest.fixture
def api_client(dev_system: DevSystem) -> Iterator[TestClient]:
    """A TestClient on the dev system's ASGI app (lifespan run), admin key set."""
    with admin_client(dev_system) as client:
        yield client


@pytest.fixture
def make_user(dev_system: DevSystem) -> Callable[..., str]:
    """Factory: create a user in the dev system; return its API key."""

    def make(name: str, *, admin: bool = False) -> str:
        with Session(dev_system.engine) as session:
            _, key = create_user(session, name, role="admin" if admin else "user")
            session.commit()
        return key

    return make


@pytest.fixture
def running(dev_system: DevSystem, api_client: TestClient) -> TestClient:
    """The API client, with the dev system's worker threads running."""
    dev_system.worker.start()
    return api_client
