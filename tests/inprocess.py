"""Helpers for tests that drive the in-process (dev mode) system through its API."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from errand.dev import DevSystem, build_dev_system
from errand_schema.models import JobAttempt, JobEvent, User

from helpers import wait_for
from resources import RUN_ID, fresh_database
from unit_options import TEST_WORKER_OPTIONS

FINAL = {"completed", "failed", "dead", "cancelled"}


@contextmanager
def pg_dev_system(home: Path, name: str, job_modules: list[str]) -> Iterator[DevSystem]:
    """The in-process system (two worker threads, not started) on a PostgreSQL database
    of its own named ``errand_<name>_...``, dropped afterwards."""
    with fresh_database(f"errand_{name}_{RUN_ID}_{uuid.uuid4().hex[:8]}", migrate=False) as url:
        system = build_dev_system(
            home,
            threads=2,
            job_modules=job_modules,
            worker_options=dict(TEST_WORKER_OPTIONS),
            database_url=url,
        )
        try:
            yield system
        finally:
            system.close()


@contextmanager
def admin_client(system: DevSystem) -> Iterator[TestClient]:
    """A TestClient on the system's ASGI app (lifespan run), its admin key set."""
    with TestClient(system.app) as client:
        client.headers["Authorization"] = f"Bearer {system.api_key}"
        yield client


def cap_admin(system: DevSystem, max_in_flight: int) -> None:
    """Set the bootstrap admin's cap on jobs in flight (0: none)."""
    with Session(system.engine) as s:
        admin = s.exec(select(User).where(User.role == "admin")).one()
        admin.max_in_flight = max_in_flight
        s.add(admin)
        s.commit()
    # A change made in SQL, not through the API: the API's cached caller would hold the
    # old cap for ERRAND_AUTH_CACHE_S.
    cache = system.api.state.services.auth_cache
    if cache is not None:
        cache.clear()


def submit(
    client: TestClient, job_type: str, payload: dict[str, Any] | None = None, **options: Any
) -> str:
    """Submit a job; return its id."""
    resp = client.post("/v1/jobs", json={"type": job_type, "payload": payload or {}, **options})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def get(client: TestClient, job_id: str) -> dict[str, Any]:
    """Return a job."""
    resp = client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_status(
    client: TestClient, job_id: str, statuses: set[str] | None = None, timeout_s: float = 20
) -> dict[str, Any]:
    """Wait until the job is in one of ``statuses`` (default: any final one)."""
    wanted = statuses or FINAL

    def reached() -> dict[str, Any] | None:
        job = get(client, job_id)
        return job if job["status"] in wanted else None

    return wait_for(reached, timeout_s, 0.03, what=f"job {job_id} to be {sorted(wanted)}")


def events(system: DevSystem, job_id: str) -> list[JobEvent]:
    """Return the job's audit events in seq order."""
    with Session(system.engine) as s:
        stmt = select(JobEvent).where(JobEvent.job_id == uuid.UUID(job_id))
        return list(s.exec(stmt.order_by(col(JobEvent.seq))).all())


def attempts(system: DevSystem, job_id: str) -> list[JobAttempt]:
    """Return the job's attempts by step and attempt number."""
    with Session(system.engine) as s:
        stmt = select(JobAttempt).where(JobAttempt.job_id == uuid.UUID(job_id))
        return list(
            s.exec(
                stmt.order_by(
                    col(JobAttempt.run), col(JobAttempt.step_index), col(JobAttempt.attempt)
                )
            )
        )
