"""One trace per job across the API, the broker, every attempt and step, and the notifier."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from errand.dev import DevSystem, build_dev_system
from errand_api import fastpath
from errand_schema.telemetry import flush_spans

from helpers import wait_for
from inprocess import submit, wait_status
from unit_options import TEST_WORKER_OPTIONS

#: One exporter for the process: the global tracer provider can be set only once.
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, DevSystem]]:
    """The in-process system exporting spans to :data:`EXPORTER`, worker running.

    One for the module: SQLAlchemy's instrumentation is global to the process and
    traces only the first engine it is given.
    """
    system = build_dev_system(
        tmp_path_factory.mktemp("traced") / "dev",
        threads=2,
        job_modules=["engine_jobs"],
        worker_options=TEST_WORKER_OPTIONS,
        span_exporter=EXPORTER,
    )
    with TestClient(system.app) as client:
        client.headers["Authorization"] = f"Bearer {system.api_key}"
        system.worker.start()
        yield client, system
    system.close()


def _trace(trace_id: str) -> list[ReadableSpan]:
    flush_spans()
    return [
        s
        for s in EXPORTER.get_finished_spans()
        if s.context is not None and format(s.context.trace_id, "032x") == trace_id
    ]


@pytest.mark.parametrize("key_in_memory", [False, True], ids=["through-fastapi", "plain-path"])
def test_one_job_is_one_trace_from_request_to_notification(
    traced: tuple[TestClient, DevSystem], key_in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, system = traced
    cache = system.api.state.services.auth_cache
    assert cache is not None
    cache.clear()
    if key_in_memory:  # the submission then takes the plain path (errand_api.fastpath)
        assert client.get("/v1/jobs").status_code == 200
    plain: list[Any] = []
    submit_plainly = fastpath._submit
    monkeypatch.setattr(fastpath, "_submit", lambda *a: plain.append(a) or submit_plainly(*a))
    job_id = submit(client, "test.async", {"ticks": 1, "tick_s": 0})
    assert len(plain) == (1 if key_in_memory else 0)
    job = wait_status(client, job_id)
    assert job["status"] == "completed"
    trace_id = job["trace_id"]
    assert trace_id is not None

    def complete() -> list[ReadableSpan] | None:
        spans = _trace(trace_id)
        names = {s.name for s in spans}
        wanted = {
            "POST /v1/jobs",
            "errand.enqueue",
            "errand.step test.async/first",
            "errand.step test.async/second",
            "errand.notify",
        }
        return spans if wanted <= names else None

    spans = wait_for(complete, 10, 0.1, what="the job's spans")
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    request = next(s for s in spans if s.name == "POST /v1/jobs")
    enqueue = next(s for s in spans if s.name == "errand.enqueue")
    first = next(s for s in spans if s.name == "errand.step test.async/first")
    second = next(s for s in spans if s.name == "errand.step test.async/second")
    # the enqueue happens inside the request; the first step continues the message's
    # context; the second step continues the message the first one sent
    assert _ids(_ancestors(enqueue, by_id))[-1] == _ids([request])[0]
    assert _ids([enqueue, request]) == _ids(_ancestors(first, by_id))[:2]
    assert _ids([first])[0] in _ids(_ancestors(second, by_id))
    assert first.attributes is not None
    assert first.attributes["errand.job.id"] == job_id
    assert first.attributes["errand.outcome"] == "next"
    assert second.attributes is not None
    assert second.attributes["errand.outcome"] == "completed"
    # every relayed event of the job is linked into its trace
    notified = [s for s in spans if s.name == "errand.notify"]
    assert {s.attributes["errand.event.type"] for s in notified if s.attributes} >= {
        "queued",
        "started",
        "completed",
    }
    # the SQL the request ran is in the trace too (SQLAlchemy instrumentation)
    sql = [s for s in spans if s.attributes and "db.statement" in s.attributes]
    assert any(str(s.attributes["db.statement"]).startswith("INSERT INTO jobs") for s in sql)
    # (one process here: production processes name themselves errand-api, -worker, ...)
    assert all(str(s.resource.attributes["service.name"]).startswith("errand-") for s in spans)


def test_every_attempt_of_a_retried_job_is_in_its_trace(
    traced: tuple[TestClient, DevSystem],
) -> None:
    client, _ = traced
    job_id = submit(client, "test.flaky", {"pass_on": 3}, retry={"strategy": "fixed", "base_s": 0})
    job = wait_status(client, job_id)
    assert job["status"] == "completed"

    def attempts() -> list[ReadableSpan] | None:
        calls = [s for s in _trace(job["trace_id"]) if s.name == "errand.step test.flaky/call"]
        return calls if len(calls) == 3 else None

    calls = wait_for(attempts, 10, 0.1, what="three attempt spans")
    outcomes = sorted((s.attributes or {})["errand.attempt"] for s in calls)
    assert outcomes == [1, 2, 3]


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


def _ids(spans: list[ReadableSpan]) -> list[int]:
    return [s.context.span_id for s in spans if s.context is not None]
