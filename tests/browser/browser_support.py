"""Helpers of the browser tests: the dev server handle, pages that collect console
errors and a log of their traffic, sign-in and waiting on a job's status."""

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Request, WebSocket, expect

from helpers import wait_for


@dataclass
class DevServer:
    """A running dev system: its URL, admin key and an HTTP client with that key."""

    url: str
    api_key: str
    data_dir: Path
    http: httpx.Client

    def submit(self, job_type: str, payload: dict[str, object], **options: object) -> str:
        """Submit a job through the API; return its id."""
        resp = self.http.post("/v1/jobs", json={"type": job_type, "payload": payload, **options})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def job(self, job_id: str) -> dict[str, object]:
        """Read a job through the API."""
        resp = self.http.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


@dataclass
class BrowserPage:
    """A fresh page, collecting console errors and uncaught exceptions."""

    page: Page
    out_dir: Path
    errors: list[str] = field(default_factory=list)
    #: The page's requests, live-feed frames (progress ticks left out) and console
    #: lines, each with the seconds since the page opened.
    traffic: list[str] = field(default_factory=list)
    #: Requests sent and not answered yet.
    pending: dict[Request, str] = field(default_factory=dict)

    def screenshot(self, name: str) -> Path:
        """Save a full-page screenshot in the test's output folder."""
        path = self.out_dir / f"{name}.png"
        # From the top: a full-page capture of a scrolled page shows the sticky header
        # in the middle.
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def traffic_report(self, last: int = 60) -> str:
        """The requests still unanswered and the latest traffic (printed by the
        fixtures, so shown when a test fails)."""
        lines = ["unanswered requests:", *(f"  {r}" for r in self.pending.values())]
        lines += [f"last {last} of {len(self.traffic)} traffic lines:", *self.traffic[-last:]]
        return "\n".join(lines)

    def assert_no_console_errors(self) -> None:
        """Fail on any console error or uncaught exception seen so far."""
        assert not self.errors, "console errors:\n" + "\n".join(self.errors)


def open_page(browser: Browser, tmp_path: Path, viewport: dict[str, int]) -> BrowserPage:
    """Open a page in a fresh context, recording console errors and page errors, and a
    log of its traffic (:func:`_watch_traffic`)."""
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(20_000)
    result = BrowserPage(page, tmp_path)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            result.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def on_page_error(error: Error) -> None:
        result.errors.append(f"pageerror: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    _watch_traffic(page, result)
    return result


def _watch_traffic(page: Page, result: BrowserPage) -> None:
    """Log the page's requests, live-feed frames (ticks left out) and console lines in
    ``result.traffic``, and keep its unanswered requests in ``result.pending``."""
    opened = time.monotonic()

    def stamp(line: str) -> str:
        return f"{time.monotonic() - opened:8.2f}s {line[:300]}"

    def note(line: str) -> None:
        result.traffic.append(stamp(line))

    def on_request(request: Request) -> None:
        result.pending[request] = stamp(f"{request.method} {request.url}")
        note(f"-> {request.method} {request.url}")

    def on_done(request: Request) -> None:
        result.pending.pop(request, None)
        failure = request.failure
        note(f"<- {request.url}" + (f" FAILED {failure}" if failure else ""))

    def on_frame(payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else repr(payload)
        if '"progress"' not in text:
            note(f"ws <- {text}")

    def on_websocket(ws: WebSocket) -> None:
        note(f"ws open {ws.url}")
        ws.on("framereceived", on_frame)
        ws.on("close", lambda _ws: note("ws closed"))

    page.on("console", lambda message: note(f"console.{message.type}: {message.text}"))
    page.on("request", on_request)
    page.on("requestfinished", on_done)
    page.on("requestfailed", on_done)
    page.on("websocket", on_websocket)


def sign_in(page: Page, url: str, key: str, path: str = "/admin") -> None:
    """Open ``path`` and sign in with ``key``."""
    page.goto(url + path)
    page.get_by_label(re.compile("API key")).fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app-header")).to_be_visible()


def wait_status(server: DevServer, job_id: str, status: str, timeout_s: float = 30) -> None:
    """Wait until the API reports the job in ``status``."""
    wait_for(
        lambda: server.job(job_id)["status"] == status,
        timeout_s,
        0.1,
        what=f"job {job_id} to be {status}",
    )
