"""Escalation: a dead job emits a ``dead`` event and POSTs its type's alert webhook."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from errand.dev import DevSystem

from helpers import wait_for
from inprocess import events, submit, wait_status


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()


def test_a_dead_job_posts_an_alert_to_its_types_webhook(
    running: TestClient, dev_system: DevSystem, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    spec = dev_system.runtime.registry.get("test.flaky")
    assert spec is not None
    spec.alert_webhook_url = url
    try:
        job_id = submit(running, "test.flaky", {}, max_attempts=1)
        assert wait_status(running, job_id)["status"] == "dead"
        assert "dead" in [e.type for e in events(dev_system, job_id)]
        wait_for(lambda: received, 10, what="the alert")
    finally:
        spec.alert_webhook_url = None
    (alert,) = received
    assert alert["event"] == "job.dead"
    assert alert["job_id"] == job_id
    assert alert["error"]["type"] == "TransientError"
