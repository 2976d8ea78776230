"""The end-user demo page (``/demo``) in headless Chromium: a product page that starts a
multi-step job and follows it with the JavaScript client (``watchJob``); its toasts come
from the user room's ``jobs_summary``."""

import re
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from browser_support import BrowserPage, DevServer, sign_in
from helpers import wait_for

pytestmark = pytest.mark.e2e

#: How long a demo report may take to reach a state the test waits for, in ms.
JOB_TIMEOUT_MS = 30_000
#: Where the summary test leaves its screenshot for people to look at.
TOAST_SCREENSHOT = "/tmp/errand-demo-toast.png"
#: Records every toast the page shows (they leave after a few seconds).
RECORD_TOASTS = """() => {
  window.__toasts = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) {
        if (node.classList && node.classList.contains("toast")) {
          const text = node.querySelector(".msg").textContent;
          window.__toasts.push({ kind: node.dataset.kind, text });
        }
      }
    }
  }).observe(document.getElementById("toasts"), { childList: true });
}"""


#: The notifier's summary window (``ERRAND_SUMMARY_WINDOW_S``, its default in dev mode).
WINDOW_S = 2.0


def _quick(name: str, **step: Any) -> dict[str, Any]:
    steps = [{"name": name, "duration_s": 0.2, **step}]
    return {"type": "demo.pipeline", "payload": {"steps": steps}}


def _finished_count(toasts: list[dict[str, str]]) -> int:
    """Completions the success toasts announce ("3 jobs finished." or one job's line)."""
    total = 0
    for t in toasts:
        if t["kind"] == "success":
            many = re.match(r"(\d+) jobs finished", t["text"])
            total += int(many.group(1)) if many else 1
    return total


def test_a_report_started_on_the_demo_page_reaches_100_percent_and_toasts(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key, path="/demo")
    indicator = page.locator("#running-indicator")
    expect(indicator).to_have_text("No jobs running")
    # When a report is started
    page.get_by_role("button", name="Generate report").click()
    card = page.locator("#reports .job-card").first
    expect(card).to_be_visible()
    job_id = card.get_attribute("data-job-id")
    assert job_id
    # Then the header counts it while it runs, with the current step under the bar
    expect(indicator).to_have_text("1 job running")
    expect(card.locator(".current-step")).to_have_text(re.compile(r"Step \d of 4: \w+"))
    bar = card.get_by_role("progressbar")
    # and the bar reaches 100% and a toast offers to view the result
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=JOB_TIMEOUT_MS)
    toast = page.locator(".toast", has_text="is ready")
    expect(toast).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(indicator).to_have_text("No jobs running")
    ui.screenshot("demo-completed")
    toast.get_by_role("button", name="View").click()
    dialog = page.get_by_role("dialog", name="Report")
    expect(dialog).to_contain_text("completed")
    expect(dialog).to_contain_text("completed_steps")
    ui.screenshot("demo-result")
    dialog.get_by_role("button", name="Close").click()
    assert dev_server.job(job_id)["status"] == "completed"
    ui.assert_no_console_errors()


def test_the_demo_page_toasts_failures_and_cancellations(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key, path="/demo")
    # A report told to fail at its render step ends with an error toast
    page.get_by_label("Fail at the render step").check()
    page.get_by_role("button", name="Generate report").click()
    failed = page.locator(".toast[data-kind='error']", has_text="failed")
    expect(failed).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(failed).to_contain_text("render")
    # A long report cancelled from its card ends with a cancellation toast
    page.get_by_label("Fail at the render step").uncheck()
    page.get_by_label("Size").select_option("long")
    page.get_by_role("button", name="Generate report").click()
    card = page.locator("#reports .job-card").first
    expect(card.locator(".status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#running-indicator")).to_have_text("1 job running")
    card.get_by_role("button", name=re.compile("Cancel report")).click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel report").click()
    expect(page.locator(".toast", has_text="was cancelled")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(card.locator(".status")).to_have_text("cancelled")
    expect(page.locator("#running-indicator")).to_have_text("No jobs running")
    ui.screenshot("demo-failed-and-cancelled")
    ui.assert_no_console_errors()


def test_the_demo_page_fits_a_phone(phone_ui: BrowserPage, dev_server: DevServer) -> None:
    page = phone_ui.page
    sign_in(page, dev_server.url, dev_server.api_key, path="/demo")
    page.get_by_role("button", name="Generate report").click()
    bar = page.locator("#reports .job-card").first.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    phone_ui.screenshot("demo-phone")
    phone_ui.assert_no_console_errors()


def test_finished_jobs_make_one_summary_toast_and_failures_one_each(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    page = ui.page
    # Given no job of an earlier test is still on its way, nor finished so recently that
    # its summary window (per user, kept by the notifier) is still open: its completion
    # would be counted with this test's

    def quiet() -> bool:
        resp = dev_server.http.get("/v1/jobs", params={"limit": 100})
        if resp.status_code != 200:
            return False
        jobs = resp.json()["data"]
        if any(j["status"] in ("queued", "running", "retrying") for j in jobs):
            return False
        ends = [datetime.fromisoformat(j["finished_at"]) for j in jobs if j["finished_at"]]
        return not ends or datetime.now(UTC) - max(ends) > timedelta(seconds=WINDOW_S + 0.5)

    wait_for(quiet, 60, 0.2, what="earlier tests' jobs and summary windows to close")
    sign_in(page, dev_server.url, dev_server.api_key, path="/demo")
    # And the page's user-room connection is up and every toast is recorded
    expect(page.locator("#app-header")).to_have_attribute("data-summaries", "live")
    page.evaluate(RECORD_TOASTS)
    # When three jobs finish together, one fails and one is cancelled
    jobs = [_quick(f"part{i}") for i in range(3)]
    jobs += [_quick("render", fail_permanently=True), {**_quick("later"), "delay_s": 600}]
    resp = dev_server.http.post("/v1/jobs:batch", json={"jobs": jobs})
    assert resp.status_code == 202, resp.text
    ids = [j["id"] for j in resp.json()["data"]]
    assert dev_server.http.post(f"/v1/jobs/{ids[4]}/cancel").status_code == 202

    def toasts() -> list[dict[str, str]]:
        return list(page.evaluate("window.__toasts"))

    # Then the completions are announced together (one toast per 2 s window)
    wait_for(lambda: _finished_count(toasts()) >= 3, 30, 0.1, what="the completions' toast")
    # and the failure and the cancellation each on their own
    failure = page.locator(".toast[data-kind='error']", has_text=f"Job {ids[3][:8]} failed")
    expect(failure).to_contain_text("render")
    cancel = page.locator(".toast[data-kind='warning']", has_text="was cancelled")
    expect(cancel).to_contain_text(ids[4][:8])
    ui.screenshot("demo-summary-toasts")
    shutil.copy(ui.out_dir / "demo-summary-toasts.png", TOAST_SCREENSHOT)
    seen = toasts()
    assert _finished_count(seen) == 3
    assert sum(t["kind"] == "error" for t in seen) == 1
    assert sum(t["kind"] == "warning" for t in seen) == 1
    ui.assert_no_console_errors()
