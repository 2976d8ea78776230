"""``email.send`` against a local SMTP server (aiosmtpd) started by the test, in dev mode."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient

from errand.dev import DevSystem
from errand_worker.errors import PermanentError, TransientError
from errand_worker.jobtypes.email_send import SmtpConfig, deliver

from helpers import free_port
from inprocess import attempts, submit, wait_status
from unit_options import TEST_WORKER_OPTIONS

#: Retried at once, so a 4xx answer shows up as a second attempt quickly.
FAST_RETRY = {"retry": {"strategy": "fixed", "base_s": 0.05, "jitter": False}, "max_attempts": 3}


@dataclass
class Mailbox:
    """What the local SMTP server received, and the answers it gives to DATA."""

    received: list[Envelope] = field(default_factory=list)
    #: Answers to give, in order, before accepting (e.g. ``["451 try later"]``).
    answers: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook: refuse with the next planned answer, else keep the message."""
        if self.answers:
            return self.answers.pop(0)
        self.received.append(envelope)
        return "250 Message accepted for delivery"

    def message(self, index: int = 0) -> EmailMessage:
        """A received message, parsed."""
        content = self.received[index].original_content
        assert isinstance(content, bytes)
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A local SMTP server on a free port: (its mailbox, its port)."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def worker_options(mailbox: tuple[Mailbox, int]) -> dict[str, Any]:
    """The dev worker sends through the local SMTP server, in clear (no TLS on loopback)."""
    return {
        **TEST_WORKER_OPTIONS,
        "smtp_host": "127.0.0.1",
        "smtp_port": mailbox[1],
        "smtp_starttls": False,
        "smtp_from": "Errand <noreply@errand.test>",
    }


@pytest.fixture
def report_url() -> Iterator[str]:
    """A local HTTP server serving one CSV file (an attachment by reference)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"day,total\nmonday,42\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/report.csv"
    server.shutdown()
    server.server_close()


def _email(**extra: Any) -> dict[str, Any]:
    return {
        "to": ["alice@example.com"],
        "subject": "Invoice $number for $name",
        "body": "Hello $name,\nyour invoice ${number} is ready.\n",
        "variables": {"number": 42, "name": "Alice"},
        **extra,
    }


def test_email_send_delivers_a_message_with_the_right_headers(
    running: TestClient, mailbox: tuple[Mailbox, int], report_url: str
) -> None:
    box, _ = mailbox
    payload = _email(
        cc=["bob@example.com"],
        bcc=["carol@example.com"],
        reply_to="billing@example.com",
        html="<p>Hello <b>$name</b></p>",
        attachments=[{"url": report_url, "filename": "report.csv"}],
    )
    job_id = submit(running, "email.send", payload)
    done = wait_status(running, job_id)
    assert done["status"] == "completed", done["error"]
    # The envelope goes to every recipient, Bcc included
    envelope = box.received[0]
    assert envelope.mail_from == "noreply@errand.test"
    assert sorted(envelope.rcpt_tos) == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
    ]
    # The headers are filled in from the templates; Bcc is never shown
    message = box.message()
    assert message["From"] == "Errand <noreply@errand.test>"
    assert message["To"] == "alice@example.com"
    assert message["Cc"] == "bob@example.com"
    assert message["Reply-To"] == "billing@example.com"
    assert message["Subject"] == "Invoice 42 for Alice"
    assert message["Message-ID"] == f"<{job_id}.0@errand>"
    assert message["Bcc"] is None
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert text.get_content().splitlines() == ["Hello Alice,", "your invoice 42 is ready."]
    assert "<b>Alice</b>" in html.get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == b"day,total\nmonday,42\n"
    assert done["result"]["accepted"] == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
    ]


def test_a_550_answer_fails_the_job_without_a_retry(
    running: TestClient, dev_system: DevSystem, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    box.answers = ["550 5.1.1 mailbox unavailable"]
    job_id = submit(running, "email.send", _email(), **FAST_RETRY)
    done = wait_status(running, job_id)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "PermanentError"
    assert "550" in done["error"]["message"]
    assert len(attempts(dev_system, job_id)) == 1
    assert box.received == []


def test_a_451_answer_is_retried_and_the_next_attempt_delivers(
    running: TestClient, dev_system: DevSystem, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    box.answers = ["451 4.3.0 try again later"]
    job_id = submit(running, "email.send", _email(), **FAST_RETRY)
    done = wait_status(running, job_id)
    assert done["status"] == "completed"
    first, second = attempts(dev_system, job_id)
    assert (first.outcome, first.error_type) == ("failed", "TransientError")
    assert first.error_message is not None
    assert "451" in first.error_message
    assert second.outcome == "completed"
    assert len(box.received) == 1
    # Both attempts carried the same Message-ID: a receiver can drop a duplicate
    assert box.message()["Message-ID"] == f"<{job_id}.0@errand>"


def test_a_missing_template_variable_fails_at_once(running: TestClient) -> None:
    job_id = submit(running, "email.send", _email(subject="Hi $nobody"), **FAST_RETRY)
    done = wait_status(running, job_id)
    assert done["status"] == "failed"
    assert "nobody" in done["error"]["message"]


def test_an_unreachable_server_is_a_transient_error_and_a_5xx_a_permanent_one(
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@b.test", "c@d.test", "x"
    closed = SmtpConfig(host="127.0.0.1", port=free_port(), starttls=False, timeout_s=2)
    with pytest.raises(TransientError):
        deliver(message, closed)
    box.answers = ["554 5.7.1 rejected"]
    with pytest.raises(PermanentError):
        deliver(message, SmtpConfig(host="127.0.0.1", port=port, starttls=False, timeout_s=2))
