"""API surface across real processes: shared rate limits, idempotency on PostgreSQL,
and signed completion callbacks verified by a receiver."""

import concurrent.futures
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from errand.client import ErrandClient
from errand_schema.signing import SIGNATURE_HEADER, SignatureError, verify_signature

from helpers import TEST_SIGNING_SECRET, ServiceProcess, free_port, wait_for, wait_http_ok

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, str | None]]]]:
    """An HTTP server on 127.0.0.1 recording raw bodies and signature headers."""
    received: list[tuple[bytes, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers.get(SIGNATURE_HEADER)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/callback", received
    server.shutdown()
    server.server_close()


def test_the_rate_limit_holds_across_two_api_processes(
    system: Any, start_service: Callable[..., ServiceProcess]
) -> None:
    # Given two API processes sharing Redis, and a burst of 5 at 0.2 jobs/s
    limits = {"ERRAND_RATE_LIMIT_PER_S": "0.2", "ERRAND_RATE_LIMIT_BURST": "5"}
    urls = []
    for name in ("api-a", "api-b"):
        port = free_port()
        proc = start_service(name, ["api"], ERRAND_PORT=str(port), **system.env, **limits)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=proc)
        urls.append(f"http://127.0.0.1:{port}")
    key = system.make_user("limited")
    # When a user submits alternately to both
    codes = []
    for i in range(8):
        resp = httpx.post(
            f"{urls[i % 2]}/v1/jobs",
            json={"type": "noop"},
            headers={"Authorization": f"Bearer {key}"},
        )
        codes.append(resp.status_code)
        last = resp
    # Then only the burst is accepted, whichever replica answers
    assert codes.count(202) == 5
    assert codes[5:] == [429, 429, 429]
    assert int(last.headers["Retry-After"]) >= 1
    assert last.headers["content-type"].startswith("application/problem+json")


def test_concurrent_posts_with_one_idempotency_key_create_one_job(system: Any) -> None:
    key = system.make_user("idem")
    body = {"type": "noop", "payload": {"n": 1}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{system.api_url}/v1/jobs", json=body, headers=headers, timeout=20)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with ErrandClient(system.api_url, key) as client:
        listed = httpx.get(f"{system.api_url}/v1/jobs", headers=headers).json()
        assert listed["count"] == 1
        conflict = httpx.post(
            f"{system.api_url}/v1/jobs", headers=headers, json={"type": "noop", "payload": {"n": 2}}
        )
        assert conflict.status_code == 409
        assert client.get(answers[0].json()["id"])["type"] == "noop"


def test_a_finished_job_is_posted_to_its_callback_signed(
    system: Any, receiver: tuple[str, list[tuple[bytes, str | None]]]
) -> None:
    url, received = receiver
    key = system.make_user("callbacks")
    with ErrandClient(system.api_url, key) as client:
        job = client.submit("noop", {}, callback_url=url)
        wait_for(lambda: received, 30, 0.1, what="the callback")
        final = client.get(job["id"])
    body, header = received[0]
    # The receiver verifies the signature over the raw body
    verify_signature(TEST_SIGNING_SECRET, body, header)
    payload = json.loads(body)
    assert payload["event"] == "job.completed"
    assert payload["job"]["id"] == job["id"]
    assert final["status"] == "completed"
    # A tampered body or a stale timestamp fails verification
    with pytest.raises(SignatureError):
        verify_signature(TEST_SIGNING_SECRET, body.replace(b"completed", b"failed"), header)
    with pytest.raises(SignatureError):
        verify_signature(TEST_SIGNING_SECRET, body, header, now=10**10)
    # And the delivery is visible from the job's events
    events = httpx.get(
        f"{system.api_url}/v1/jobs/{job['id']}/events", headers={"Authorization": f"Bearer {key}"}
    ).json()
    delivery = events[-1]["data"]["callback_job_id"]
    with ErrandClient(system.api_url, key) as client:
        assert client.get(delivery)["status"] == "completed"
