"""Everyday features in dev mode: failure analysis, holds, labels and export, result
reuse and per-type roles (issue #11, items 2 to 6)."""

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlmodel import Session
from typer.testing import CliRunner

from errand import cli_everyday, cli_jobs
from errand.cli import app as cli_app
from errand.client import ErrandClient
from errand.dev import DevSystem, build_dev_system
from errand_api.failures import fingerprint, normalise_message
from errand_schema.models import Job

from helpers import wait_for
from inprocess import attempts, events, get, submit, wait_status


@pytest.fixture
def dev_system(tmp_path: Path, worker_options: dict[str, Any]) -> Iterator[DevSystem]:
    """The dev system of ``tests/unit/conftest.py`` with the everyday job types too."""
    system = build_dev_system(
        tmp_path / "dev",
        threads=2,
        job_modules=["sample_jobs", "flow_jobs", "everyday_jobs"],
        worker_options=worker_options,
    )
    yield system
    system.close()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _parked(dev_system: DevSystem, job_id: str) -> Job | None:
    """The job if a worker looked at it and left it waiting (queued, not admitted)."""
    with Session(dev_system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        parked = job is not None and job.status == "queued" and job.published_at is None
        return job if parked else None


def _reconcile(dev_system: DevSystem) -> None:
    """Run reconciler passes (admission, publishing) as its thread would."""
    reconciler = dev_system.runtime.reconciler
    assert reconciler is not None
    reconciler.run_once()
    reconciler.run_once()


# --- failure analysis -----------------------------------------------------------------


def test_fingerprints_ignore_numbers_ids_hex_and_quoted_strings() -> None:
    a = normalise_message(f"order 12 not found in 'shop-1' ({uuid.uuid4()}, 0xbeef, 2.5 s)")
    b = normalise_message(f'order 9 not found in "x" ({uuid.uuid4()}, 0x1, 30 s)')
    assert a == b == "order <n> not found in <str> (<uuid>, <hex>, <n> s)"
    assert fingerprint("KeyError", "user 1") == fingerprint("KeyError", "user 2")
    assert fingerprint("KeyError", "user 1") != fingerprint("ValueError", "user 1")


def test_the_failure_report_groups_three_error_kinds_across_two_types_exactly(
    running: TestClient,
) -> None:
    # Given failures of 3 kinds in 2 types; some jobs recover on their second attempt
    plan = [
        ("every.fail_a", "missing", 1, 2),
        ("every.fail_a", "missing", 2, 0),
        ("every.fail_a", "missing", 3, 0),
        ("every.fail_a", "refused", 4, 2),
        ("every.fail_a", "refused", 5, 2),
        ("every.fail_b", "bad_id", 6, 0),
        ("every.fail_b", "bad_id", 7, 0),
    ]
    ids = {n: submit(running, t, {"kind": k, "n": n, "pass_on": p}) for t, k, n, p in plan}
    final = {n: wait_status(running, job_id)["status"] for n, job_id in ids.items()}
    assert final == {1: "completed", 2: "dead", 3: "dead", 4: "completed", 5: "completed"} | {
        6: "dead",
        7: "dead",
    }
    # When an admin asks for the last hour's failures
    resp = running.get("/v1/admin/failures", params={"since_s": 3600})
    assert resp.status_code == 200, resp.text
    groups = resp.json()["data"]
    # Then there is one group per (type, step, kind), with exact counts and outcomes
    summary = {
        (g["type"], g["step"], g["error_type"], g["pattern"]): (
            g["count"],
            g["jobs"],
            g["recovered"],
            g["dead"],
        )
        for g in groups
    }
    assert summary == {
        ("every.fail_a", "call", "LookupError", "order <n> not found in <str>"): (5, 3, 1, 2),
        (
            "every.fail_a",
            "call",
            "ConnectionError",
            "host <n>.<n> refused the connection after <n> ms",
        ): (2, 2, 2, 0),
        ("every.fail_b", "work", "ValueError", "bad id <uuid> (<hex>)"): (2, 2, 0, 2),
    }
    assert [g["count"] for g in groups] == [5, 2, 2]  # most frequent first
    missing = groups[0]
    assert set(missing["example_job_ids"]) == {ids[1], ids[2], ids[3]}
    assert missing["first_seen_at"] <= missing["last_seen_at"]
    only_b = running.get("/v1/admin/failures", params={"type": "every.fail_b"}).json()
    assert [g["type"] for g in only_b["data"]] == ["every.fail_b"]


def test_the_failure_report_is_for_admins_and_errand_failures_prints_it(
    running: TestClient, make_user: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user("plain")
    assert running.get("/v1/admin/failures", headers=_as(user)).status_code == 403
    job_id = submit(running, "every.fail_b", {"kind": "missing", "n": 1})
    wait_status(running, job_id)

    class InProcessClient(ErrandClient):
        def __init__(self, _url: str, _key: str) -> None:
            self._http = running  # type: ignore[assignment]

        def close(self) -> None:
            """The test client outlives each command."""

    monkeypatch.setattr(cli_jobs, "ErrandClient", InProcessClient)
    monkeypatch.setattr(cli_everyday, "console", Console(width=200))
    monkeypatch.setenv("ERRAND_API_KEY", "from-the-test-client")
    result = CliRunner().invoke(cli_app, ["failures", "--since", "600"])
    assert result.exit_code == 0, result.output
    assert "every.fail_b" in result.output
    assert "LookupError" in result.output
    held = CliRunner().invoke(cli_app, ["hold", job_id])
    assert held.exit_code == 1  # finished: nothing to hold
    assert "409" in held.output
    exported = CliRunner().invoke(cli_app, ["export", "--format", "csv", "--type", "every.fail_b"])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert [(r["id"], r["status"]) for r in rows] == [(job_id, "dead")]


# --- hold and release -----------------------------------------------------------------


def test_a_held_job_does_not_run_while_held_and_completes_after_release(
    api_client: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    # Given a queued job (already admitted: its message is in the broker), held
    job_id = submit(api_client, "every.gated", {"gate_dir": str(tmp_path)})
    held = api_client.post(f"/v1/jobs/{job_id}/hold")
    assert held.status_code == 200, held.text
    assert held.json()["held_at"] is not None
    # When the worker starts, it refuses the message and the job waits, unadmitted
    dev_system.worker.start()
    wait_for(lambda: _parked(dev_system, job_id), 10, what="the held job to be parked")
    other = submit(api_client, "every.gated", {"gate_dir": str(tmp_path)})
    assert wait_status(api_client, other)["status"] == "completed"
    _reconcile(dev_system)
    assert _parked(dev_system, job_id) is not None
    assert attempts(dev_system, job_id) == []
    # Then after the release it runs to the end
    released = api_client.post(f"/v1/jobs/{job_id}/release")
    assert released.status_code == 200
    assert released.json()["held_at"] is None
    assert wait_status(api_client, job_id)["status"] == "completed"
    types = [e.type for e in events(dev_system, job_id)]
    assert types[:3] == ["queued", "held", "released"]
    assert types[-1] == "completed"


def test_holding_a_running_five_step_job_in_step_two_stops_it_after_step_two(
    running: TestClient, dev_system: DevSystem, tmp_path: Path
) -> None:
    # Given a 5-step job inside step 2
    job_id = submit(running, "every.gated", {"gate_dir": str(tmp_path), "gate_step": 2})
    wait_for(lambda: (tmp_path / "waiting").exists(), 10, what="step 2 to start")
    # When it is held and step 2 then finishes
    held = running.post(f"/v1/jobs/{job_id}/hold").json()
    assert (held["status"], held["step"]) == ("running", "s2")
    (tmp_path / "open").touch()
    parked = wait_for(lambda: _parked(dev_system, job_id), 10, what="the job to stop")
    # Then it waits at step 3 with steps 1 and 2 checkpointed, and stays there
    assert parked.step == "s3"
    _reconcile(dev_system)
    job = get(running, job_id)
    assert job["status"] == "queued"
    assert [s["status"] for s in job["steps"]] == ["completed"] * 2 + ["pending"] * 3
    assert [a.step_index for a in attempts(dev_system, job_id)] == [0, 1]
    # And after the release it resumes at step 3 (steps 1 and 2 do not run again)
    running.post(f"/v1/jobs/{job_id}/release")
    done = wait_status(running, job_id)
    assert done["status"] == "completed"
    assert [a.step_index for a in attempts(dev_system, job_id)] == [0, 1, 2, 3, 4]
    kinds = [(e.type, e.status) for e in events(dev_system, job_id) if e.type != "step"]
    assert kinds == [
        ("queued", "queued"),
        ("started", "running"),
        ("held", "running"),
        ("queued", "queued"),  # after step 2, at step 3
        ("released", "queued"),
        ("started", "running"),
        ("completed", "completed"),
    ]


def test_only_the_owner_or_an_admin_may_hold_and_finished_jobs_cannot_be(
    running: TestClient, make_user: Callable[..., str], tmp_path: Path
) -> None:
    owner, stranger = make_user("owner"), make_user("stranger")
    job_id = running.post(
        "/v1/jobs",
        json={"type": "every.gated", "payload": {"gate_dir": str(tmp_path), "gate_step": 1}},
        headers=_as(owner),
    ).json()["id"]
    assert running.post(f"/v1/jobs/{job_id}/hold", headers=_as(stranger)).status_code == 404
    assert running.post(f"/v1/jobs/{job_id}/hold", headers=_as(owner)).status_code == 200
    assert running.post(f"/v1/jobs/{job_id}/hold").status_code == 200  # admin; harmless twice
    assert running.post(f"/v1/jobs/{job_id}/release", headers=_as(stranger)).status_code == 404
    assert running.post(f"/v1/jobs/{job_id}/release").status_code == 200
    (tmp_path / "open").touch()
    wait_status(running, job_id)
    finished = running.post(f"/v1/jobs/{job_id}/hold", headers=_as(owner))
    assert finished.status_code == 409
    assert finished.json()["type"].endswith("job_not_holdable")


# --- labels ---------------------------------------------------------------------------


def _nap(labels: dict[str, str]) -> dict[str, Any]:
    return {"type": "flow.nap", "payload": {"seconds": 0}, "labels": labels}


def test_labels_filter_listing_stats_and_export(api_client: TestClient) -> None:
    # Given jobs labelled with a context and a team
    made = {}
    for ctx in ("c1", "c2"):
        for team in ("red", "blue"):
            resp = api_client.post("/v1/jobs", json=_nap({"context_id": ctx, "team": team}))
            assert resp.status_code == 202, resp.text
            made[(ctx, team)] = resp.json()["id"]
    assert api_client.get(f"/v1/jobs/{made['c1', 'red']}").json()["labels"] == {
        "context_id": "c1",
        "team": "red",
    }
    # Then label filters are ANDed, in listings, stats and the export
    listed = api_client.get("/v1/jobs", params={"label": ["context_id:c1", "team:red"]}).json()
    assert [j["id"] for j in listed["data"]] == [made["c1", "red"]]
    by_ctx = api_client.get("/v1/jobs", params={"label": "context_id:c2"}).json()
    assert {j["id"] for j in by_ctx["data"]} == {made["c2", "red"], made["c2", "blue"]}
    stats = api_client.get("/v1/stats", params={"label": "team:blue"}).json()
    assert [(s["type"], s["queued"]) for s in stats["data"]] == [("flow.nap", 2)]
    ndjson = api_client.get(
        "/v1/jobs:export", params={"label": "team:blue", "events": "true", "format": "ndjson"}
    )
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [j["id"] for j in lines] == [made["c1", "blue"], made["c2", "blue"]]  # oldest first
    assert [e["type"] for e in lines[0]["events"]] == ["queued"]
    exported = api_client.get("/v1/jobs:export", params={"label": "context_id:c1", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {r["id"] for r in rows} == {made["c1", "red"], made["c1", "blue"]}
    assert json.loads(rows[0]["labels"])["context_id"] == "c1"


def test_label_limits_and_filter_syntax_are_enforced(api_client: TestClient) -> None:
    too_many = {f"k{i}": "v" for i in range(21)}
    for labels in (too_many, {"k" * 65: "v"}, {"k": "v" * 201}, {"a:b": "v"}):
        resp = api_client.post("/v1/jobs", json=_nap(labels))
        assert resp.status_code == 422, labels
    at_limit = {f"k{i}": "v" * 200 for i in range(20)}
    assert api_client.post("/v1/jobs", json=_nap(at_limit)).status_code == 202
    bad = api_client.get("/v1/jobs", params={"label": "no-colon"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "label.0"


# --- result reuse ---------------------------------------------------------------------


def _age_results(dev_system: DevSystem, job_ids: list[str], seconds: float) -> None:
    """Move the jobs' completion into the past (instead of waiting out the window)."""
    with Session(dev_system.engine) as s:
        for job_id in job_ids:
            job = s.get(Job, uuid.UUID(job_id))
            assert job is not None
            assert job.finished_at is not None
            job.finished_at -= timedelta(seconds=seconds)
            s.add(job)
        s.commit()


def test_a_reusable_result_is_served_within_the_window_and_recomputed_after_it_or_on_opt_out(
    running: TestClient, dev_system: DevSystem, make_user: Callable[..., str]
) -> None:
    # Given a computed result
    first = submit(running, "every.compute", {"x": 21, "options": {"b": 1, "a": 2}})
    computed = wait_status(running, first)
    assert computed["result"] == {"value": 42, "computed_by": first}
    # When the same payload (keys in another order) comes again within the window
    again = running.post(
        "/v1/jobs",
        json={"type": "every.compute", "payload": {"options": {"a": 2, "b": 1}, "x": 21}},
    ).json()
    # Then it is completed at once with the cached result, without running
    assert again["status"] == "completed"
    assert again["result"] == computed["result"]
    assert again["result_reused_from"] == first
    assert [s["status"] for s in again["steps"]] == ["completed"]
    assert attempts(dev_system, again["id"]) == []
    assert [e.type for e in events(dev_system, again["id"])] == ["queued", "started", "completed"]
    # Opting out, another payload, or another user: computed again
    fresh = submit(running, "every.compute", {"x": 21, "options": {"b": 1, "a": 2}}, reuse=False)
    other_payload = submit(running, "every.compute", {"x": 22})
    theirs = running.post(
        "/v1/jobs",
        json={"type": "every.compute", "payload": {"x": 21, "options": {"a": 2, "b": 1}}},
        headers=_as(make_user("someone")),
    ).json()["id"]
    for job_id in (fresh, other_payload, theirs):
        done = wait_status(running, job_id)
        assert done["result"]["computed_by"] == job_id
        assert done["result_reused_from"] is None
    # After the window (60 s) the result is computed again
    _age_results(dev_system, [first, fresh], 61)
    late = running.post(
        "/v1/jobs",
        json={"type": "every.compute", "payload": {"x": 21, "options": {"a": 2, "b": 1}}},
    ).json()
    assert late["status"] == "queued"
    assert wait_status(running, late["id"])["result"]["computed_by"] == late["id"]


# --- per-type roles -------------------------------------------------------------------


def test_a_non_admin_submitting_an_admin_only_type_gets_403_naming_the_role(
    api_client: TestClient, make_user: Callable[..., str]
) -> None:
    user = make_user("operator-wannabe")
    body = {"type": "every.maintenance", "payload": {}}
    refused = api_client.post("/v1/jobs", json=body, headers=_as(user))
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "'admin'" in refused.json()["detail"]
    batch = api_client.post("/v1/jobs:batch", json={"jobs": [_nap({}), body]}, headers=_as(user))
    assert batch.status_code == 403
    assert api_client.get("/v1/jobs", headers=_as(user)).json()["count"] == 0  # none created
    assert api_client.post("/v1/jobs", json=body).status_code == 202  # the admin may


def test_a_label_filter_is_a_containment_test_on_postgres_and_a_json_lookup_elsewhere() -> None:
    """On PostgreSQL ``labels @> '{"k": "v"}'`` is what the GIN index ``ix_jobs_labels``
    serves; SQLite (dev mode) compares the extracted value."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlmodel import select

    from errand_api.search import LabelIs

    stmt = select(Job.id).where(LabelIs("context_id", "c-1"))
    pg = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    assert 'jobs.labels @> CAST(\'{"context_id": "c-1"}\' AS JSONB)' in str(pg)
    lite = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    assert "@>" not in lite
    assert "context_id" in lite
    assert "'c-1'" in lite
