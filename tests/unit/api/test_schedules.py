"""Cron schedules: ``/v1/schedules`` CRUD and validation, the scheduler's missed-run
policies with a frozen clock, duplicate protection, time zones, and ``errand schedules``.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from errand import cli_jobs
from errand.cli import app as cli_app
from errand.client import ErrandClient
from errand.dev import DevSystem
from errand_schema.cron import next_run_after, runs_between
from errand_schema.models import Job, JobEvent, JobStep, Schedule, utcnow
from errand_worker import scheduler
from errand_worker.scheduler import fire_due_schedules

from helpers import wait_for
from inprocess import wait_status
from unit_options import TEST_WORKER_OPTIONS

#: A fixed instant on a whole minute: the frozen "now" of the policy tests.
T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def worker_options() -> dict[str, Any]:
    """The background reconciler never runs a pass: each test fires schedules itself."""
    return {**TEST_WORKER_OPTIONS, "reconcile_interval_s": 3600.0}


def _create(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "every minute", "cron": "* * * * *", "type": "noop", **fields}
    resp = client.post("/v1/schedules", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _edit(system: DevSystem, schedule_id: str, **values: Any) -> None:
    with Session(system.engine) as s:
        row = s.get(Schedule, uuid.UUID(schedule_id))
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)
        s.add(row)
        s.commit()


def _schedule(system: DevSystem, schedule_id: str) -> Schedule:
    with Session(system.engine) as s:
        row = s.get(Schedule, uuid.UUID(schedule_id))
        assert row is not None
        return row


def _jobs(system: DevSystem, schedule_id: str) -> list[Job]:
    with Session(system.engine) as s:
        stmt = select(Job).where(Job.schedule_id == uuid.UUID(schedule_id))
        return list(s.exec(stmt.order_by(col(Job.scheduled_for))).all())


def _due_at(system: DevSystem, client: TestClient, next_run_at: datetime, **fields: Any) -> str:
    """Create a schedule and pretend its next run is ``next_run_at``; return its id."""
    schedule_id = str(_create(client, **fields)["id"])
    _edit(system, schedule_id, next_run_at=next_run_at)
    return schedule_id


# --- the HTTP API -------------------------------------------------------------------


def test_a_schedule_is_created_read_listed_changed_and_deleted(api_client: TestClient) -> None:
    created = _create(api_client, timezone="Europe/Berlin", payload={"note": 1}, missed="run_once")
    next_run = datetime.fromisoformat(created["next_run_at"])
    assert utcnow() < next_run <= utcnow() + timedelta(minutes=1)
    assert (created["type"], created["timezone"], created["missed"]) == (
        "noop",
        "Europe/Berlin",
        "run_once",
    )
    url = f"/v1/schedules/{created['id']}"
    assert api_client.get(url).json() == created
    listed = api_client.get("/v1/schedules").json()
    assert [s["id"] for s in listed["data"]] == [created["id"]]
    assert listed["count"] == 1

    changed = api_client.patch(
        url, json={"name": "hourly", "cron": "0 * * * *", "priority": "high"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "hourly"
    assert changed.json()["priority"] == "high"
    assert datetime.fromisoformat(changed.json()["next_run_at"]).minute == 0

    assert api_client.delete(url).status_code == 204
    gone = api_client.get(url)
    assert gone.status_code == 404
    assert gone.json()["type"].endswith("/not_found")


def test_another_users_schedule_answers_like_a_missing_one_and_admins_see_all(
    api_client: TestClient, make_user: Any
) -> None:
    alice = {"Authorization": f"Bearer {make_user('alice')}"}
    bob = {"Authorization": f"Bearer {make_user('bob')}"}
    resp = api_client.post(
        "/v1/schedules", json={"name": "a", "cron": "* * * * *", "type": "noop"}, headers=alice
    )
    url = f"/v1/schedules/{resp.json()['id']}"
    for method in ("get", "patch", "delete"):
        kwargs: dict[str, Any] = {"json": {"enabled": False}} if method == "patch" else {}
        answer = getattr(api_client, method)(url, headers=bob, **kwargs)
        assert answer.status_code == 404, (method, answer.text)
    assert api_client.get("/v1/schedules", headers=bob).json()["count"] == 0
    assert api_client.get("/v1/schedules").json()["count"] == 1  # the admin's key


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"type": "no.such.type"}, "type"),
        ({"type": "test.slow", "payload": {"steps": "many"}}, "payload.steps"),
        ({"missed": "sometimes"}, "missed"),
        ({"priority": "urgent"}, "priority"),
    ],
    ids=["bad-field", "three-fields", "never-fires", "zone", "type", "payload", "missed", "prio"],
)
def test_an_invalid_schedule_is_a_422_problem_naming_the_field_and_writes_nothing(
    api_client: TestClient, fields: dict[str, Any], field: str
) -> None:
    body = {"name": "bad", "cron": "* * * * *", "type": "noop", **fields}
    resp = api_client.post("/v1/schedules", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["type"].endswith("/validation_error")
    assert field in [e["field"] for e in problem["errors"]], problem["errors"]
    assert api_client.get("/v1/schedules").json()["count"] == 0


def test_a_patch_is_validated_and_may_not_null_a_required_field(api_client: TestClient) -> None:
    url = f"/v1/schedules/{_create(api_client)['id']}"
    assert api_client.patch(url, json={"cron": "not cron"}).status_code == 422
    assert api_client.patch(url, json={"timezone": "Nowhere"}).status_code == 422
    nulled = api_client.patch(url, json={"name": None})
    assert nulled.status_code == 422
    assert nulled.json()["errors"][0]["field"] == "name"
    assert api_client.get(url).json()["cron"] == "* * * * *"


def test_a_paused_schedule_has_no_next_run_and_resumes_after_now(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    schedule_id = _due_at(dev_system, api_client, T0)
    url = f"/v1/schedules/{schedule_id}"
    paused = api_client.patch(url, json={"enabled": False}).json()
    assert paused["enabled"] is False
    assert paused["next_run_at"] is None
    assert fire_due_schedules(dev_system.runtime, now=T0 + timedelta(hours=1)) == 0
    resumed = api_client.patch(url, json={"enabled": True}).json()
    # The runs that fell in the pause are not made up.
    assert datetime.fromisoformat(resumed["next_run_at"]) > utcnow()


# --- the scheduler, with a frozen clock ---------------------------------------------


def test_an_on_time_fire_makes_one_queued_job_for_the_cron_time(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    # Given a schedule due at T0
    schedule_id = _due_at(dev_system, api_client, T0, payload={"n": 1}, priority="high")
    # When the scheduler runs just after T0, twice
    made = fire_due_schedules(dev_system.runtime, now=T0 + timedelta(seconds=0.3))
    again = fire_due_schedules(dev_system.runtime, now=T0 + timedelta(seconds=0.4))
    # Then one job stands for T0, queued like any job, and the next run is T0 + 1 min
    assert (made, again) == (1, 0)
    [job] = _jobs(dev_system, schedule_id)
    assert job.scheduled_for == T0
    assert job.status == "queued"
    assert job.type == "noop"
    assert job.payload == {"n": 1}
    assert job.priority == "high"
    assert job.step == "run"
    with Session(dev_system.engine) as s:
        steps = s.exec(select(JobStep).where(JobStep.job_id == job.id)).all()
        event = s.exec(select(JobEvent).where(JobEvent.job_id == job.id)).one()
    assert [st.name for st in steps] == ["run"]
    assert event.type == "queued"
    assert event.actor == f"schedule:{schedule_id}"
    row = _schedule(dev_system, schedule_id)
    assert row.next_run_at == T0 + timedelta(minutes=1)
    assert row.last_run_at == T0


def test_skip_makes_no_job_for_runs_missed_during_downtime(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    # Given a per-minute schedule due at T0, and nothing ran for ten and a half minutes
    schedule_id = _due_at(dev_system, api_client, T0, missed="skip")
    # When the scheduler runs again
    made = fire_due_schedules(dev_system.runtime, now=T0 + timedelta(minutes=10, seconds=30))
    # Then no job is made, and the next run is the first one after now
    assert made == 0
    assert _jobs(dev_system, schedule_id) == []
    assert _schedule(dev_system, schedule_id).next_run_at == T0 + timedelta(minutes=11)


def test_run_once_makes_one_job_for_the_latest_missed_run(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    schedule_id = _due_at(dev_system, api_client, T0, missed="run_once")
    made = fire_due_schedules(dev_system.runtime, now=T0 + timedelta(minutes=10, seconds=30))
    assert made == 1
    assert [j.scheduled_for for j in _jobs(dev_system, schedule_id)] == [T0 + timedelta(minutes=10)]
    assert _schedule(dev_system, schedule_id).next_run_at == T0 + timedelta(minutes=11)


def test_runs_a_few_seconds_late_are_on_time_and_each_gets_its_job(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    # Given a per-second schedule whose scheduler paused for 3.5 s (a leader hand-over)
    schedule_id = _due_at(dev_system, api_client, T0, cron="* * * * * *", missed="skip")
    # When it runs again
    made = fire_due_schedules(dev_system.runtime, now=T0 + timedelta(seconds=3.5))
    # Then every second in between got exactly one job
    assert made == 4
    assert [j.scheduled_for for j in _jobs(dev_system, schedule_id)] == [
        T0 + timedelta(seconds=s) for s in range(4)
    ]
    assert _schedule(dev_system, schedule_id).next_run_at == T0 + timedelta(seconds=4)


def test_a_run_that_already_has_its_job_is_not_made_twice(
    api_client: TestClient, dev_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a schedule due at T0 whose run another scheduler made already
    schedule_id = _due_at(dev_system, api_client, T0)
    assert fire_due_schedules(dev_system.runtime, now=T0) == 1
    _edit(dev_system, schedule_id, next_run_at=T0)
    # When a scheduler that did not see that job fires the same run
    monkeypatch.setattr(scheduler, "_already_made", lambda *_args: set())
    made = fire_due_schedules(dev_system.runtime, now=T0)
    # Then the unique constraint refuses it, the pass goes on, and nothing changed
    assert made == 0
    assert len(_jobs(dev_system, schedule_id)) == 1
    assert _schedule(dev_system, schedule_id).next_run_at == T0
    # And the database itself refuses a second job for the same run
    dup = Job(**_jobs(dev_system, schedule_id)[0].model_dump(exclude={"id"}))
    with Session(dev_system.engine) as s:
        s.add(dup)
        with pytest.raises(IntegrityError):
            s.commit()


def test_a_schedule_whose_job_type_is_gone_is_disabled(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    schedule_id = _due_at(dev_system, api_client, T0)
    _edit(dev_system, schedule_id, job_type="retired.type")
    assert fire_due_schedules(dev_system.runtime, now=T0) == 0
    row = _schedule(dev_system, schedule_id)
    assert row.enabled is False
    assert row.next_run_at is None
    assert _jobs(dev_system, schedule_id) == []
    # And it cannot be resumed until it names a registered type again
    resumed = api_client.patch(f"/v1/schedules/{schedule_id}", json={"enabled": True})
    assert resumed.status_code == 422
    assert [e["field"] for e in resumed.json()["errors"]] == ["type"]


def test_a_scheduled_job_runs_to_completion_through_the_reconciler(
    dev_system: DevSystem, running: TestClient
) -> None:
    # Given a per-second schedule of a three-step type
    created = _create(running, cron="* * * * * *", type="test.flaky", payload={"pass_on": 1})
    reconciler = dev_system.runtime.reconciler
    assert reconciler is not None
    # When reconciler passes run until it made a job
    wait_for(lambda: reconciler.run_once()["scheduled"], 5, 0.05, what="a scheduled job")
    running.patch(f"/v1/schedules/{created['id']}", json={"enabled": False})
    # Then that job completes all its steps
    job = _jobs(dev_system, created["id"])[0]
    final = wait_status(running, str(job.id))
    assert final["status"] == "completed"
    assert [s["status"] for s in final["steps"]] == ["completed"] * 3


# --- time zones ---------------------------------------------------------------------


def test_a_schedule_runs_at_its_local_time_across_daylight_saving(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    # Given 09:00 every day in New York, fired on the winter day before DST starts
    winter = datetime(2025, 3, 8, 14, tzinfo=UTC)  # 09:00 EST
    schedule_id = _due_at(
        dev_system, api_client, winter, cron="0 9 * * *", timezone="America/New_York"
    )
    assert fire_due_schedules(dev_system.runtime, now=winter) == 1
    # Then the next run is 09:00 EDT, an hour earlier in UTC
    assert _schedule(dev_system, schedule_id).next_run_at == datetime(2025, 3, 9, 13, tzinfo=UTC)


def test_a_local_time_skipped_or_repeated_by_dst_runs_once_that_day() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    spring = runs_between(
        "30 2 * * *", berlin, datetime(2025, 3, 30, tzinfo=UTC), datetime(2025, 3, 31, tzinfo=UTC)
    )
    autumn = runs_between(
        "30 2 * * *", berlin, datetime(2025, 10, 26, tzinfo=UTC), datetime(2025, 10, 27, tzinfo=UTC)
    )
    # 26 October, 00:00 CEST to 23:59 CET
    hourly = runs_between(
        "0 * * * *",
        berlin,
        datetime(2025, 10, 25, 22, tzinfo=UTC),
        datetime(2025, 10, 26, 22, 59, tzinfo=UTC),
    )
    # 02:30 does not exist on 30 March: it runs once, at 03:00 CEST
    assert spring == [datetime(2025, 3, 30, 1, tzinfo=UTC)]
    # 02:30 happens twice on 26 October: it runs once, the first time (CEST)
    assert autumn == [datetime(2025, 10, 26, 0, 30, tzinfo=UTC)]
    # An hourly schedule runs every real hour of that 25-hour day
    assert len(hourly) == 25
    assert next_run_after("0 9 * * *", ZoneInfo("UTC"), T0) == datetime(2025, 6, 3, 9, tzinfo=UTC)


# --- the CLI ------------------------------------------------------------------------


@pytest.fixture
def cli(api_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose client talks to the in-process API."""

    class InProcessClient(ErrandClient):
        def __init__(self, _url: str, _key: str) -> None:
            self._http = api_client

        def close(self) -> None:
            """The test client outlives each command."""

    monkeypatch.setattr(cli_jobs, "ErrandClient", InProcessClient)
    monkeypatch.setenv("ERRAND_API_KEY", "from-the-test-client")
    return CliRunner()


def test_errand_schedules_creates_lists_pauses_resumes_and_deletes(
    cli: CliRunner, api_client: TestClient
) -> None:
    created = cli.invoke(cli_app, ["schedules", "create", "nightly", "0 3 * * *", "noop"])
    assert created.exit_code == 0, created.output
    schedule_id = created.output.split()[0]
    listed = cli.invoke(cli_app, ["schedules", "list"])
    assert listed.exit_code == 0
    assert "nightly" in listed.output
    assert cli.invoke(cli_app, ["schedules", "pause", schedule_id]).exit_code == 0
    assert api_client.get(f"/v1/schedules/{schedule_id}").json()["enabled"] is False
    assert cli.invoke(cli_app, ["schedules", "resume", schedule_id]).exit_code == 0
    assert api_client.get(f"/v1/schedules/{schedule_id}").json()["enabled"] is True
    assert cli.invoke(cli_app, ["schedules", "delete", schedule_id]).exit_code == 0
    assert api_client.get("/v1/schedules").json()["count"] == 0
    bad = cli.invoke(cli_app, ["schedules", "create", "bad", "nope", "noop"])
    assert bad.exit_code == 1
    assert "cron" in bad.output
