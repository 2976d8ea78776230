"""Labels and export on PostgreSQL (JSONB label filters, keyset export pages): exact
results for 10,000 seeded jobs, and memory that stays flat while exporting them."""

import csv
import io
import json
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert
from sqlmodel import Session

from errand_api.export import export_jobs
from errand_api.main import create_app
from errand_api.search import job_filters
from errand_api.settings import ApiSettings
from errand_schema.auth import Principal, create_user
from errand_schema.db import create_db_engine
from errand_schema.models import Job, JobEvent

from resources import RUN_ID, fresh_database

pytestmark = pytest.mark.integration

#: Jobs seeded; every tenth belongs to a second user.
ROWS = 10_000
ADMIN_KEY = "erk_everyday_admin_key_0123456789"


@dataclass
class Seeded:
    """The seeded database and who owns what."""

    engine: Engine
    user_key: str
    user_id: uuid.UUID
    #: Job ids by seed number i (labels: batch b{i % 10}, q {i % 4}; user unless i % 10 == 9).
    ids: list[uuid.UUID]


def _owned_by_user(i: int) -> bool:
    return i % 10 != 9


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    """A scratch PostgreSQL database with 10,000 labelled jobs (one event each)."""
    with fresh_database(f"errand_test_{RUN_ID}_everyday") as url:
        engine = create_db_engine(url, pool_size=5)
        try:
            yield _seed(engine)
        finally:
            engine.dispose()


def _seed(engine: Engine) -> Seeded:
    with Session(engine) as session:
        user, key = create_user(session, "labeller")
        other, _ = create_user(session, "someone-else")
        session.commit()
        user_id, other_id = user.id, other.id
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [uuid.uuid4() for _ in range(ROWS)]
    jobs, history = [], []
    for i, job_id in enumerate(ids):
        # Pairs share a creation time: the export's keyset must break ties by id.
        at = start + timedelta(milliseconds=i // 2)
        jobs.append(
            {
                "id": job_id,
                "type": "flow.nap",
                "owner_id": user_id if _owned_by_user(i) else other_id,
                "status": "queued",
                "priority": "normal",
                "queue": "flow",
                "payload": {"i": i, "password": "hunter2"},
                "labels": {"batch": f"b{i % 10}", "q": str(i % 4)},
                "progress": 0,
                "step_index": 0,
                "step": "nap",
                "attempt": 0,
                "run": 1,
                "max_attempts": 1,
                "seq": 1,
                "created_at": at,
                "updated_at": at,
            }
        )
        history.append(
            {"job_id": job_id, "seq": 1, "type": "queued", "status": "queued", "actor": "seed"}
            | {"progress": 0, "at": at}
        )
    with engine.begin() as conn:
        conn.execute(insert(Job), jobs)
        conn.execute(insert(JobEvent), history)
    return Seeded(engine, key, user_id, ids)


@pytest.fixture(scope="module")
def api(seeded: Seeded) -> Iterator[TestClient]:
    """The API on the seeded database (no broker or Redis needed), admin key set."""
    settings = ApiSettings(
        database_url=str(seeded.engine.url),
        rabbitmq_url="memory://",
        redis_url="memory://",
        bootstrap_admin_key=ADMIN_KEY,
    )
    app = create_app(
        settings, engine=seeded.engine, broker=StubBroker(), redis=fakeredis.FakeRedis()
    )
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client


def _in_export_order(seeded: Seeded, wanted: list[int]) -> list[str]:
    """Ids of the seed numbers, oldest first (ties broken by id, as the export does)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    keyed = sorted((base + timedelta(milliseconds=i // 2), seeded.ids[i]) for i in wanted)
    return [str(job_id) for _, job_id in keyed]


def test_label_filters_list_and_count_exactly_the_labelled_jobs(
    api: TestClient, seeded: Seeded
) -> None:
    as_user = {"Authorization": f"Bearer {seeded.user_key}"}
    # Every page of the user's q=1 jobs, through the cursor
    found: list[str] = []
    cursor = None
    while True:
        params = {"label": "q:1", "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params, headers=as_user).json()
        found += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = {str(seeded.ids[i]) for i in range(ROWS) if i % 4 == 1 and _owned_by_user(i)}
    assert len(found) == len(expected) == 2000
    assert set(found) == expected
    # Two labels are ANDed; stats count the same jobs
    both = api.get("/v1/jobs", params={"label": ["batch:b3", "q:1"], "limit": 500}).json()
    assert {j["id"] for j in both["data"]} == {str(seeded.ids[i]) for i in range(13, ROWS, 20)}
    stats = api.get("/v1/stats", params={"label": "batch:b3"}, headers=as_user).json()
    assert [(s["type"], s["queued"]) for s in stats["data"]] == [("flow.nap", 1000)]
    assert api.get("/v1/stats", params={"label": "batch:b9"}, headers=as_user).json()["data"] == []


def test_ndjson_and_csv_exports_are_exact_for_ten_thousand_jobs(
    api: TestClient, seeded: Seeded
) -> None:
    # All of them, as an admin, oldest first, payloads masked
    everything = api.get("/v1/jobs:export", params={"format": "ndjson"})
    assert everything.status_code == 200
    lines = [json.loads(line) for line in everything.text.splitlines()]
    assert [j["id"] for j in lines] == _in_export_order(seeded, list(range(ROWS)))
    assert lines[0]["payload"]["password"] != "hunter2"
    # The user's own, filtered by two labels, as CSV with events
    exported = api.get(
        "/v1/jobs:export",
        params={"format": "csv", "events": "true", "label": ["batch:b3", "q:1"]},
        headers={"Authorization": f"Bearer {seeded.user_key}"},
    )
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["id"] for r in rows] == _in_export_order(seeded, list(range(13, ROWS, 20)))
    assert all(json.loads(r["labels"]) == {"batch": "b3", "q": "1"} for r in rows)
    assert {json.loads(r["events"])[0]["type"] for r in rows} == {"queued"}
    # Another user's jobs never appear in a user's export
    theirs = api.get(
        "/v1/jobs:export",
        params={"label": "batch:b9"},
        headers={"Authorization": f"Bearer {seeded.user_key}"},
    )
    assert theirs.text == ""


def _export_peak(seeded: Seeded, labels: list[tuple[str, str]]) -> tuple[int, int, int]:
    """Consume an admin export (with events); return (jobs, bytes, peak traced memory)."""
    admin = Principal(user_id=uuid.uuid4(), name="admin", role="admin")
    where = job_filters(admin, labels=labels)
    jobs = size = 0
    tracemalloc.start()
    try:
        for chunk in export_jobs(seeded.engine, where, "ndjson", events=True):
            jobs += chunk.count(b"\n")
            size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return jobs, size, peak


#: Most memory an export may allocate at once (one page of 500 jobs with their events).
PEAK_LIMIT_BYTES = 16 * 1024 * 1024


def test_exporting_ten_thousand_jobs_keeps_memory_flat(seeded: Seeded) -> None:
    # Given the memory needed to export 1,000 jobs (two pages), once caches are warm
    _export_peak(seeded, [("batch", "b5")])
    small_jobs, small_bytes, small_peak = _export_peak(seeded, [("batch", "b3")])
    assert small_jobs == 1000
    # When all 10,000 are exported (ten times the jobs and the bytes)
    all_jobs, all_bytes, all_peak = _export_peak(seeded, [])
    assert all_jobs == ROWS
    assert all_bytes > 9 * small_bytes
    # Then the peak stays that of one page, not of the whole export
    assert all_peak < 1.25 * small_peak, (small_peak, all_peak)
    assert all_peak < PEAK_LIMIT_BYTES
