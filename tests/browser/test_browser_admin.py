"""The admin dashboard in headless Chromium: sign-in, live overview, the job table, the
job page (cancel), the dead-letter queue (requeue), on laptop and phone widths."""

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Route, WebSocketRoute, expect

from browser_support import BrowserPage, DevServer, sign_in, wait_status

pytestmark = pytest.mark.e2e

#: How long a job may take to reach a state the test waits for, in ms.
JOB_TIMEOUT_MS = 30_000


def test_admin_signs_in_and_sees_the_live_overview(ui: BrowserPage, dev_server: DevServer) -> None:
    # Given a finished job, so the overview has something to count
    done = dev_server.submit("demo.pipeline", {"steps": [{"name": "one", "duration_s": 0.1}]})
    wait_status(dev_server, done, "completed")
    page = ui.page
    # When the admin signs in
    sign_in(page, dev_server.url, dev_server.api_key)
    # Then the Socket.IO connection is live and the overview shows the queue and charts
    expect(page.locator("#live-state")).to_have_text("Live")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#queues-table tr[data-queue='default']")).to_be_visible()
    expect(page.locator("#history-note")).to_contain_text("then live")
    expect(page.locator("#chart-throughput .now")).not_to_have_text("—")
    # and the key stays in the tab across a reload
    page.reload()
    expect(page.locator("#live-state")).to_have_text("Live")
    expect(page.locator("#queues-table tr[data-queue='default']")).to_be_visible()
    expect(page.locator("#history-note")).to_contain_text("then live")
    ui.screenshot("overview")
    ui.assert_no_console_errors()


def test_overview_is_readable_at_a_phone_width(
    phone_ui: BrowserPage, dev_server: DevServer
) -> None:
    page = phone_ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    expect(page.locator("#live-state")).to_have_text("Live")
    expect(page.locator("#chart-depth")).to_be_visible()
    # Nothing is wider than the screen (tables scroll inside their own box).
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    phone_ui.screenshot("overview-phone")
    page.goto(dev_server.url + "/admin#/jobs")
    expect(page.locator("#jobs-table")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    phone_ui.screenshot("jobs-phone")
    phone_ui.assert_no_console_errors()


def test_job_table_updates_in_place_without_layout_shift(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    page = ui.page
    page.add_init_script(
        """
        window.__layoutShift = 0;
        new PerformanceObserver((list) => {
          for (const entry of list.getEntries()) {
            if (!entry.hadRecentInput) window.__layoutShift += entry.value;
          }
        }).observe({ type: "layout-shift", buffered: true });
        """
    )
    sign_in(page, dev_server.url, dev_server.api_key)
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("#jobs-status")).to_contain_text("Page 1")
    # (live first: a job submitted while the feed connects is not announced)
    expect(page.locator("#live-state")).to_have_text("Live")
    # When a job is submitted elsewhere, the table announces it instead of moving rows
    steps = [{"name": f"s{i}", "duration_s": 1.0, "ticks": 5} for i in range(3)]
    job_id = dev_server.submit("demo.pipeline", {"steps": steps})
    page.locator("#show-new").click()
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row).to_be_visible()
    shift_before = page.evaluate("window.__layoutShift")
    # Then its status and progress change in place, live, until it completes
    expect(row.locator(".status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(row.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100", timeout=JOB_TIMEOUT_MS
    )
    expect(row.locator(".status")).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.__layoutShift") - shift_before < 0.01
    ui.screenshot("jobs")
    # and the filters narrow the table (search by id)
    page.get_by_label("Search").fill(job_id)
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    page.get_by_label("Status").select_option("failed")
    expect(page.locator("#jobs-table tbody")).to_contain_text("No jobs match")
    ui.screenshot("jobs-filtered")
    ui.assert_no_console_errors()


def test_cancelling_a_running_job_from_its_page(ui: BrowserPage, dev_server: DevServer) -> None:
    # Given a long job that is running
    job_id = dev_server.submit(
        "demo.pipeline", {"steps": [{"name": "long", "duration_s": 60, "ticks": 600}]}
    )
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    badge = page.locator(".job-head .status")
    expect(badge).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#steps li[data-step='long']")).to_be_visible()
    # When the admin cancels it and confirms
    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog", name="Cancel this job?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel job").click()
    # Then the page shows it cancelled, live, with the cancellation in the audit history
    expect(badge).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    # (a read of the history that follows the live event: as long as the badge may take)
    expect(page.locator("#events-table")).to_contain_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_enabled()
    assert dev_server.job(job_id)["status"] == "cancelled"
    ui.screenshot("job-cancelled")
    ui.assert_no_console_errors()


def test_the_page_catches_up_with_a_change_whose_live_events_were_lost(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    # Given a running job on its page, the live feed on its websocket
    job_id = dev_server.submit(
        "demo.pipeline", {"steps": [{"name": "long", "duration_s": 60, "ticks": 600}]}
    )
    page = ui.page
    sockets: list[WebSocketRoute] = []
    lose = {"events": False}

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        sockets.append(ws)
        server.on_message(lambda message: None if lose["events"] else ws.send(message))
        ws.on_message(lambda message: server.send(message))

    page.route_web_socket(re.compile(r".*/socket\.io/.*"), relay)
    sign_in(page, dev_server.url, dev_server.api_key)
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    badge = page.locator(".job-head .status")
    expect(badge).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    deadline = time.monotonic() + 30
    while not sockets and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets Playwright run the route's handler
    assert sockets, "the live feed moved to a websocket"
    # When the job is cancelled while the feed loses every event (the cancellation's too)
    lose["events"] = True
    resp = dev_server.http.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202, resp.text
    wait_status(dev_server, job_id, "cancelled")
    # and the feed then reconnects (its subscription's answer holds the new state)
    lose["events"] = False
    sockets[-1].close()
    # Then the page shows the job cancelled, with the cancellation in its history
    expect(badge).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#events-table")).to_contain_text("cancelled")


def test_a_long_audit_history_is_read_to_its_end(ui: BrowserPage, dev_server: DevServer) -> None:
    # Given a finished job with more events than one read of the history returns (the
    # page asks for 500 at a time, the API answers at most 1,000)
    job_id = dev_server.submit(
        "demo.pipeline", {"steps": [{"name": "busy", "duration_s": 1.2, "ticks": 1200}]}
    )
    wait_status(dev_server, job_id, "completed")
    last_seq = dev_server.job(job_id)["seq"]
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    # When the admin opens its page
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    # Then the history reaches the job's last event, every tick counted
    table = page.locator("#events-table")
    expect(table.locator(f"tr[data-seq='{last_seq}']")).to_contain_text("completed")
    expect(table).to_contain_text("1200 progress ticks folded.")
    ui.screenshot("job-long-history")
    ui.assert_no_console_errors()


def test_the_audit_history_recovers_from_failed_reads(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    # Given a finished job, and a network that drops the page's reads of its history
    job_id = dev_server.submit("demo.pipeline", {"steps": [{"name": "one", "duration_s": 0.1}]})
    wait_status(dev_server, job_id, "completed")
    last_seq = dev_server.job(job_id)["seq"]
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    reads = {"dropped": 0, "answered": 0, "drop": True}

    def history_reads(route: Route) -> None:
        if reads["drop"]:
            reads["dropped"] += 1
            route.abort()
        else:
            reads["answered"] += 1
            route.continue_()

    page.route(re.compile(r".*/v1/jobs/[^/]+/events\?.*"), history_reads)
    # When the admin opens its page: the page says the reads failed
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    alert = page.locator(".page-alert")
    expect(alert).to_contain_text("Could not read the history")
    # and once the network is back
    reads["drop"] = False
    # Then the page tries again by itself and shows the whole history, the alert gone
    expect(page.locator(f"#events-table tr[data-seq='{last_seq}']")).to_contain_text("completed")
    expect(alert).to_have_text("")
    assert reads["dropped"] >= 1
    assert reads["answered"] >= 1


def test_a_dead_job_requeued_from_the_dlq_view_completes(
    ui: BrowserPage, dev_server: DevServer, tmp_path: Path
) -> None:
    # Given a job that died because its downstream was down
    flag = tmp_path / "downstream-is-back"
    job_id = dev_server.submit("browser.downstream", {"flag_path": str(flag)})
    wait_status(dev_server, job_id, "dead")
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    page.get_by_role("link", name=re.compile("Dead letters")).click()
    row = page.locator(f"#dlq-table tr[data-job-id='{job_id}']")
    expect(row).to_contain_text("downstream unavailable")
    ui.screenshot("dlq-before")
    # When the downstream is back and the admin requeues the job from the DLQ view
    flag.touch()
    row.get_by_role("button", name=f"Requeue job {job_id}").click()
    # Then the row follows the job live until it completes
    expect(row.locator(".status")).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    assert dev_server.job(job_id)["status"] == "completed"
    # and its page shows both runs' attempts, the failure with its traceback
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    expect(page.locator("#events-table")).to_contain_text("dead → queued")
    expect(page.locator("#events-table")).to_contain_text("running → completed")
    attempts = page.locator("#attempts-table tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.first).to_contain_text("downstream unavailable")
    attempts.first.get_by_text("Traceback", exact=True).click()
    expect(attempts.first.locator("pre")).to_contain_text("TransientError")
    ui.screenshot("dlq-requeued-job")
    ui.assert_no_console_errors()


def test_pausing_a_queue_makes_its_jobs_wait_until_resumed(
    ui: BrowserPage, dev_server: DevServer
) -> None:
    page = ui.page
    sign_in(page, dev_server.url, dev_server.api_key)
    # Given the admin pauses the default queue from the overview
    page.get_by_label("Pause a", exact=True).select_option("queue")
    page.get_by_label("Name", exact=True).fill("default")
    page.get_by_role("button", name="Pause", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Pause").click()
    paused = page.locator("#pauses-table tr[data-paused='queue:default']")
    expect(paused).to_be_visible()
    # When a job is submitted to it, it waits: the pause counts it, the job stays queued
    job_id = dev_server.submit("demo.pipeline", {"steps": [{"name": "one", "duration_s": 0.1}]})
    expect(paused.locator("td.num")).to_have_text("1", timeout=JOB_TIMEOUT_MS)
    queue_row = page.locator("#queues-table tr[data-queue='default']")
    expect(queue_row.locator(".status")).to_have_text("paused")
    expect(queue_row.locator("td.num").first).to_have_text("1")
    assert dev_server.job(job_id)["status"] == "queued"
    ui.screenshot("queue-paused")
    # Then resuming the queue lets it run to completion
    paused.get_by_role("button", name="Resume default").click()
    expect(page.locator("#pauses-table")).to_contain_text("Nothing is paused")
    wait_status(dev_server, job_id, "completed")
    events = dev_server.http.get(f"/v1/jobs/{job_id}/events").json()
    assert [e["type"] for e in events][:2] == ["queued", "started"]
    ui.assert_no_console_errors()


def test_the_dashboard_works_from_the_keyboard(ui: BrowserPage, dev_server: DevServer) -> None:
    job_id = dev_server.submit(
        "demo.pipeline", {"steps": [{"name": "long", "duration_s": 60, "ticks": 600}]}
    )
    page = ui.page
    # Sign in by typing the key and pressing Enter (the field has the focus)
    page.goto(dev_server.url + "/admin")
    expect(page.get_by_label("Admin API key")).to_be_focused()
    page.keyboard.type(dev_server.api_key)
    page.keyboard.press("Enter")
    expect(page.locator("#live-state")).to_have_text("Live")
    expect(page.locator("#main")).to_be_focused()
    # On a fresh load the first Tab reaches the skip link, which focuses the content
    page.reload()
    expect(page.locator("#live-state")).to_have_text("Live")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    # The sections are links in the tab order
    jobs_link = page.get_by_role("link", name="Jobs", exact=True)
    for _ in range(10):
        if jobs_link.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press("Shift+Tab")
    expect(jobs_link).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    # A destructive action asks first; Escape keeps the job
    page.goto(f"{dev_server.url}/admin#/jobs/{job_id}")
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_enabled(timeout=JOB_TIMEOUT_MS)
    cancel.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Cancel this job?")
    expect(dialog.get_by_role("button", name="Keep")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(cancel).to_be_focused()
    assert dev_server.job(job_id)["status"] in {"queued", "running"}
    dev_server.http.post(f"/v1/jobs/{job_id}/cancel")
    ui.screenshot("keyboard")
    ui.assert_no_console_errors()
