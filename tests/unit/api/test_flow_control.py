"""Flow control in dev mode: DAGs, delays, pauses, dedup, per-user caps, breakers."""

import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from errand import cli_jobs
from errand.cli import app as cli_app
from errand.client import ErrandClient
from errand.dev import DevSystem
from errand_schema.models import Job, User

from helpers import wait_for
from inprocess import attempts, cap_admin, events, get, submit, wait_status


def _nap(**payload: Any) -> dict[str, Any]:
    return {"type": "flow.nap", "payload": {"seconds": 0.05, **payload}}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- dependencies -------------------------------------------------------------------


def test_a_dependent_its_dependencys_completion_missed_is_released_by_the_reconciler(
    dev_system: DevSystem, api_client: TestClient
) -> None:
    # Given a dependency whose flag is not set (written by an API older than
    # jobs.has_dependents, during a rolling upgrade): its completion will not look
    first = submit(api_client, "flow.nap", {"seconds": 0})
    second = api_client.post("/v1/jobs", json={**_nap(), "depends_on": [first]}).json()
    assert second["status"] == "blocked"
    with Session(dev_system.engine) as s:
        s.execute(update(Job).where(col(Job.id) == uuid.UUID(first)).values(has_dependents=False))
        s.commit()
    # When the workers (and the reconciler's passes) run
    dev_system.worker.start()
    assert wait_status(api_client, first)["status"] == "completed"
    # Then the reconciler's sweep releases the dependent, and it runs
    assert wait_status(api_client, second["id"], timeout_s=30)["status"] == "completed"
    released = [e for e in events(dev_system, second["id"]) if e.actor == "dependencies"]
    assert [e.message for e in released] == ["every dependency completed"]


def test_a_diamond_runs_in_dependency_order(running: TestClient) -> None:
    # Given A -> B, A -> C, B + C -> D
    resp = running.post(
        "/v1/workflows",
        json={
            "jobs": [
                {"ref": "d", "after": ["b", "c"], **_nap()},
                {"ref": "b", "after": ["a"], **_nap()},
                {"ref": "c", "after": ["a"], **_nap()},
                {"ref": "a", **_nap(seconds=0.2)},
            ]
        },
    )
    assert resp.status_code == 202, resp.text
    flow = resp.json()
    assert flow["jobs"]["d"]["status"] == "blocked"
    ids = {ref: job["id"] for ref, job in flow["jobs"].items()}
    # Then every job completes, each after those it waits for
    done = {ref: wait_status(running, job_id) for ref, job_id in ids.items()}
    assert {job["status"] for job in done.values()} == {"completed"}
    for later, earlier in [("b", "a"), ("c", "a"), ("d", "b"), ("d", "c")]:
        assert _at(done[later]["started_at"]) >= _at(done[earlier]["finished_at"])
    whole = running.get(f"/v1/workflows/{flow['id']}").json()
    assert whole["status"] == "completed"
    assert whole["counts"] == {"completed": 4}
    assert whole["progress"] == 100


def test_a_failed_dependency_fails_everything_downstream_and_spares_the_rest(
    running: TestClient, dev_system: DevSystem
) -> None:
    # Given the diamond where B fails
    resp = running.post(
        "/v1/workflows",
        json={
            "jobs": [
                {"ref": "a", **_nap()},
                {"ref": "b", "after": ["a"], **_nap(fail=True)},
                {"ref": "c", "after": ["a"], **_nap()},
                {"ref": "d", "after": ["b", "c"], **_nap()},
                {"ref": "e", "after": ["d"], **_nap()},
            ]
        },
    )
    ids = {ref: job["id"] for ref, job in resp.json()["jobs"].items()}
    # Then D and E fail with dependency_failed, visibly in their events; C completes
    d = wait_status(running, ids["d"])
    e = wait_status(running, ids["e"])
    c = wait_status(running, ids["c"])
    assert wait_status(running, ids["b"])["status"] == "failed"
    assert c["status"] == "completed"
    assert c["result"] == {"job": ids["c"]}
    for job in (d, e):
        assert job["status"] == "failed"
        assert job["error"]["reason"] == "dependency_failed"
        assert job["started_at"] is None
    assert d["error"]["dependency"] == ids["b"]
    assert e["error"]["dependency"] == ids["d"]
    last = events(dev_system, ids["e"])[-1]
    assert last.status == "failed"
    assert last.data == {
        "reason": "dependency_failed",
        "dependency": ids["d"],
    }
    assert running.get(f"/v1/workflows/{resp.json()['id']}").json()["status"] == "failed"


def test_cycles_unknown_refs_and_foreign_dependencies_are_rejected(
    running: TestClient, make_user: Callable[..., str]
) -> None:
    cycle = running.post(
        "/v1/workflows",
        json={
            "jobs": [
                {"ref": "a", "after": ["c"], **_nap()},
                {"ref": "b", "after": ["a"], **_nap()},
                {"ref": "c", "after": ["b"], **_nap()},
                {"ref": "free", **_nap()},
            ]
        },
    )
    assert cycle.status_code == 422
    assert "cycle among a, b, c" in cycle.text
    unknown = running.post("/v1/workflows", json={"jobs": [{"ref": "a", "after": ["x"], **_nap()}]})
    assert unknown.status_code == 422
    assert running.get("/v1/jobs", params={"type": "flow.nap"}).json()["count"] == 0
    # A job of another user, or none at all, cannot be depended on
    other = make_user("other")
    theirs = running.post("/v1/jobs", json=_nap(), headers={"Authorization": f"Bearer {other}"})
    for dep in (theirs.json()["id"], str(uuid.uuid4())):
        mine = running.post(
            "/v1/jobs",
            json={**_nap(), "depends_on": [dep]},
            headers={"Authorization": f"Bearer {make_user(f'u{dep[:6]}')}"},
        )
        assert mine.status_code == 422
        assert mine.json()["errors"][0]["field"] == "depends_on.0"


def test_depending_on_a_job_that_already_failed_fails_at_once(running: TestClient) -> None:
    failed = submit(running, "flow.nap", {"seconds": 0, "fail": True})
    assert wait_status(running, failed)["status"] == "failed"
    job = running.post("/v1/jobs", json={**_nap(), "depends_on": [failed]}).json()
    assert get(running, job["id"])["status"] == "failed"
    assert get(running, job["id"])["error"]["reason"] == "dependency_failed"


# --- schedules ----------------------------------------------------------------------


def test_a_delayed_job_waits_scheduled_then_runs(running: TestClient) -> None:
    resp = running.post("/v1/jobs", json={**_nap(), "delay_s": 1.5})
    job = resp.json()
    assert job["status"] == "scheduled"
    done = wait_status(running, job["id"])
    assert done["status"] == "completed"
    waited = (_at(done["started_at"]) - _at(job["created_at"])).total_seconds()
    assert waited >= 1.5
    both = running.post("/v1/jobs", json={**_nap(), "delay_s": 1, "run_at": "2030-01-01T00:00:00Z"})
    assert both.status_code == 422


# --- pause and resume ---------------------------------------------------------------


def _refused_while_paused(dev_system: DevSystem, job_id: str) -> bool:
    """Whether a worker looked at the job and left it waiting (message dropped)."""
    with Session(dev_system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        return job is not None and job.status == "queued" and job.published_at is None


def test_a_paused_queue_runs_nothing_and_resume_runs_its_jobs_in_order(
    running: TestClient, dev_system: DevSystem
) -> None:
    # (one job in flight at a time, so the order of admission is the order of running)
    cap_admin(dev_system, 1)
    assert running.post("/v1/admin/pause", json={"queue": "flow"}).status_code == 200
    dev_system.runtime.gates.forget_pauses()  # type: ignore[union-attr]
    low = submit(running, "flow.nap", {"seconds": 0}, priority="low")
    high = submit(running, "flow.nap", {"seconds": 0}, priority="high")
    # The worker saw the first one and left it queued; nothing ran
    wait_for(lambda: _refused_while_paused(dev_system, low), 10, what="the paused job to wait")
    assert get(running, high)["status"] == "queued"
    pauses = running.get("/v1/admin/pauses").json()
    assert [(p["kind"], p["name"], p["waiting"]) for p in pauses] == [("queue", "flow", 2)]
    # When resumed, both run, the high-priority one first
    resumed = running.post("/v1/admin/resume", json={"queue": "flow"}).json()
    assert resumed["resumed"] is True
    done_low, done_high = wait_status(running, low), wait_status(running, high)
    assert done_low["status"] == done_high["status"] == "completed"
    assert _at(done_high["finished_at"]) <= _at(done_low["started_at"])
    assert running.get("/v1/admin/pauses").json() == []


def test_pausing_a_job_type_stops_a_multi_step_job_at_its_next_step(
    running: TestClient, dev_system: DevSystem
) -> None:
    job_id = submit(running, "test.slow", {"steps": 5, "ticks": 4, "tick_s": 0.05})
    wait_status(running, job_id, {"running"})
    running.post("/v1/admin/pause", json={"job_type": "test.slow"})
    dev_system.runtime.gates.forget_pauses()  # type: ignore[union-attr]
    wait_for(lambda: _refused_while_paused(dev_system, job_id), 10, what="the job to pause")
    paused_at = get(running, job_id)
    assert 0 < paused_at["progress"] < 100
    running.post("/v1/admin/resume", json={"job_type": "test.slow"})
    assert wait_status(running, job_id)["status"] == "completed"
    bad = running.post("/v1/admin/pause", json={"queue": "a", "job_type": "b"})
    assert bad.status_code == 422


# --- deduplication ------------------------------------------------------------------


def _concurrently(client: TestClient, body: dict[str, Any], n: int = 20) -> list[Any]:
    barrier = threading.Barrier(n)

    def one(_: int) -> Any:
        barrier.wait()
        return client.post("/v1/jobs", json=body)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _jobs_with_key(dev_system: DevSystem, key: str) -> list[Job]:
    with Session(dev_system.engine) as s:
        return list(s.exec(select(Job).where(col(Job.dedup_key) == key)))


def test_simple_dedup_keeps_one_unfinished_job_for_twenty_submissions(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    body = {**_nap(), "dedup": {"key": "report-1", "mode": "simple"}}
    responses = _concurrently(api_client, body)
    assert {r.status_code for r in responses} <= {200, 202}
    assert [r.status_code for r in responses].count(202) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert responses[0].json()["id"] == str(_jobs_with_key(dev_system, "report-1")[0].id)
    assert sum(r.headers.get("Errand-Deduplicated") == "true" for r in responses) == 19
    assert len(_jobs_with_key(dev_system, "report-1")) == 1


def test_throttle_keeps_one_job_per_window(running: TestClient, dev_system: DevSystem) -> None:
    body = {**_nap(seconds=0), "dedup": {"key": "sync", "mode": "throttle", "window_s": 60}}
    first = _concurrently(running, body)
    assert len({r.json()["id"] for r in first}) == 1
    # Even once that job finished, the window still holds
    wait_status(running, first[0].json()["id"])
    assert running.post("/v1/jobs", json=body).json()["id"] == first[0].json()["id"]
    assert len(_jobs_with_key(dev_system, "sync")) == 1


def test_debounce_lets_the_last_submission_of_a_window_win(
    running: TestClient, dev_system: DevSystem
) -> None:
    # A window long enough that the 20 concurrent submissions all land in it, even on a
    # loaded CI machine (the first standing job must not come due among them).
    body = {**_nap(seconds=0), "dedup": {"key": "reindex", "mode": "debounce", "window_s": 3}}
    responses = _concurrently(running, body)
    assert {r.status_code for r in responses} == {202}
    jobs = _jobs_with_key(dev_system, "reindex")
    standing = [j for j in jobs if j.status != "cancelled"]
    assert len(jobs) == 20
    assert len(standing) == 1
    assert standing[0].status == "scheduled"
    # The one left is the newest, and it runs once its window passed
    assert standing[0].created_at == max(j.created_at for j in jobs)
    assert wait_status(running, str(standing[0].id))["status"] == "completed"
    cancelled = [j for j in jobs if j.status == "cancelled"]
    assert all(j.started_at is None for j in cancelled)


# --- fairness -----------------------------------------------------------------------


def test_one_users_flood_does_not_starve_another_user(
    running: TestClient, dev_system: DevSystem, make_user: Callable[..., str]
) -> None:
    a, b = make_user("flooder"), make_user("other")
    flood = running.post(
        "/v1/jobs:batch",
        json={"jobs": [_nap(seconds=0.1) for _ in range(60)]},
        headers={"Authorization": f"Bearer {a}"},
    )
    assert flood.status_code == 202
    with Session(dev_system.engine) as s:
        user = s.exec(select(User).where(User.name == "flooder")).one()
        admitted = s.exec(
            select(Job).where(Job.owner_id == user.id, col(Job.published_at).is_not(None))
        ).all()
    assert len(admitted) <= 3  # only the user's cap reached the broker
    mine = running.post("/v1/jobs", json=_nap(), headers={"Authorization": f"Bearer {b}"})
    done = wait_status(running, mine.json()["id"])
    finished_a = running.get(
        "/v1/jobs",
        params={"status": "completed", "limit": 100},
        headers={"Authorization": f"Bearer {a}"},
    ).json()["count"]
    assert done["status"] == "completed"
    assert finished_a < 10


# --- circuit breaker ----------------------------------------------------------------


def _calls(path: Path) -> list[tuple[str, float]]:
    return [(line.split()[0], float(line.split()[1])) for line in path.read_text().splitlines()]


def test_a_breaker_opens_after_failures_waits_without_attempts_and_closes_on_recovery(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    down, calls = tmp_path / "down", tmp_path / "calls"
    down.write_text("down")
    calls.write_text("")
    payload = {"down_file": str(down), "calls_file": str(calls)}
    first = submit(running, "flow.fragile", payload)
    # Three failed attempts open the breaker
    opened = wait_for(
        lambda: [b for b in running.get("/v1/admin/breakers").json() if b["state"] == "open"],
        15,
        what="the breaker to open",
    )[0]
    assert opened["key"] == "type:flow.fragile"
    assert opened["failures"] >= 3
    # ... and its state is a metric (the "breaker open" alert and dashboard read it)
    scraped = running.get("/metrics").text
    sample = r'errand_breaker_open\{breaker="type:flow.fragile",state="(open|half_open)"\} 1\.0'
    assert re.search(sample, scraped)
    # Jobs submitted while it is open wait in retrying, reason circuit_open (two: with
    # the first they fill the user's three slots)
    others = [submit(running, "flow.fragile", payload) for _ in range(2)]

    def waiting_behind_breaker(job_id: str) -> bool:
        return any(
            e.data and e.data.get("reason") == "circuit_open" for e in events(dev_system, job_id)
        )

    wait_for(
        lambda: all(waiting_behind_breaker(o) for o in others),
        10,
        what="the new jobs to wait behind the breaker",
    )
    # When the service recovers, a probe succeeds, the breaker closes, every job completes
    down.write_text("up")
    for job_id in [first, *others]:
        assert wait_status(running, job_id, timeout_s=30)["status"] == "completed"
    assert running.get("/v1/admin/breakers").json() == []
    # Nothing called the service while the breaker was first open
    made = _calls(calls)
    assert not [c for c in made if opened["opened_at"] < c[1] < opened["open_until"] - 0.05]
    # Waiting spent no attempt: every attempt of every job is one call
    for job_id in [first, *others]:
        assert len(attempts(dev_system, job_id)) == sum(c[0] == job_id for c in made)


# --- the CLI ------------------------------------------------------------------------


def test_errand_pause_resume_pauses_and_breakers(
    api_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InProcessClient(ErrandClient):
        def __init__(self, _url: str, _key: str) -> None:
            self._http = api_client  # type: ignore[assignment]

        def close(self) -> None:
            """The test client outlives each command."""

    monkeypatch.setattr(cli_jobs, "ErrandClient", InProcessClient)
    monkeypatch.setenv("ERRAND_API_KEY", "from-the-test-client")
    cli = CliRunner()
    paused = cli.invoke(cli_app, ["pause", "--queue", "flow"])
    assert paused.exit_code == 0, paused.output
    assert "paused queue flow" in paused.output
    assert "flow" in cli.invoke(cli_app, ["pauses"]).output
    assert cli.invoke(cli_app, ["pause", "--queue", "a", "--type", "b"]).exit_code == 2
    resumed = cli.invoke(cli_app, ["resume", "--queue", "flow"])
    assert "resumed queue flow" in resumed.output
    assert api_client.get("/v1/admin/pauses").json() == []
    listed = cli.invoke(cli_app, ["breakers"])
    assert listed.exit_code == 0
    assert "breaker" in listed.output
    missing = cli.invoke(cli_app, ["breakers", "--close", "type:none"])
    assert missing.exit_code == 1


def test_an_uncapped_users_job_is_admitted_as_it_is_written_unless_its_queue_is_paused(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    cap_admin(dev_system, 0)  # no cap
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(dev_system.engine, "before_cursor_execute", note)
    try:
        admitted = submit(api_client, "flow.nap", {"seconds": 0})
        writes = [s for s in statements if s.startswith(("INSERT INTO jobs", "UPDATE jobs"))]
        assert running_message_sent(dev_system, admitted)
        assert api_client.post("/v1/admin/pause", json={"queue": "flow"}).status_code == 200
        held_back = submit(api_client, "flow.nap", {"seconds": 0})
    finally:
        event.remove(dev_system.engine, "before_cursor_execute", note)
    # One INSERT that carries the admission, no UPDATE of it after
    assert len(writes) == 1, writes
    assert writes[0].startswith("INSERT INTO jobs")
    with Session(dev_system.engine) as s:
        assert s.get(Job, uuid.UUID(admitted)).published_at is not None  # type: ignore[union-attr]
        assert s.get(Job, uuid.UUID(held_back)).published_at is None  # type: ignore[union-attr]
    assert not running_message_sent(dev_system, held_back)


def running_message_sent(system: DevSystem, job_id: str) -> bool:
    """Whether a step message for the job waits in the dev broker's queues (encoded)."""
    queues = system.broker.queues  # type: ignore[attr-defined]
    return any(job_id.encode() in raw for queue in queues.values() for raw in list(queue.queue))
