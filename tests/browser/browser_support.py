"""Helpers of the browser tests: the dev server handle, pages that collect console
errors, sign-in and waiting on a job's status."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect

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

    def screenshot(self, name: str) -> Path:
        """Save a full-page screenshot in the test's output folder."""
        path = self.out_dir / f"{name}.png"
        # From the top: a full-page capture of a scrolled page shows the sticky header
        # in the middle.
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_no_console_errors(self) -> None:
        """Fail on any console error or uncaught exception seen so far."""
        assert not self.errors, "console errors:\n" + "\n".join(self.errors)


def open_page(browser: Browser, tmp_path: Path, viewport: dict[str, int]) -> BrowserPage:
    """Open a page in a fresh context, recording console errors and page errors."""
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
    return result


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
