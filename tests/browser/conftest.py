"""Browser-test fixtures: Debian's headless Chromium driven by Playwright, and the whole
system in one process (``errand dev`` with test job types) on a free port.

Chromium comes from Debian (``/usr/bin/chromium``), installed by
``scripts/ensure-chromium.sh`` when missing; Playwright's own browser download is not
used. The tests skip only when Chromium is absent and cannot be installed.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from errand_schema.auth import generate_key

from browser_support import BrowserPage, DevServer, open_page
from helpers import LOG_DIR, free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ENSURE_CHROMIUM = ROOT / "scripts" / "ensure-chromium.sh"
#: Laptop and phone viewports.
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's Chromium, installed first when missing (skip if that is impossible)."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            [str(ENSURE_CHROMIUM)], capture_output=True, text=True, timeout=900, check=False
        )
        if not CHROMIUM.exists():
            pytest.skip(
                f"Chromium is not installed at {CHROMIUM} and {ENSURE_CHROMIUM.name} could "
                f"not install it: {(result.stderr or result.stdout)[-500:]}"
            )
    return CHROMIUM


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the
# main thread while it is started, and every later asyncio.run() in the session would
# fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """The Playwright driver."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright, chromium_path: Path) -> Iterator[Browser]:
    """Headless Chromium."""
    chromium = playwright.chromium.launch(executable_path=str(chromium_path), headless=True)
    yield chromium
    chromium.close()


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """``devserver.py`` (the dev system with test job types) as a process of its own."""
    folder = tmp_path_factory.mktemp("browser-dev")
    port = free_port()
    key = generate_key()
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"browser-dev-{os.getpid()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(here / "devserver.py"), str(port), str(folder / "data"), key],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http_ok(f"{url}/readyz", 60)
        except AssertionError:
            print(log_path.read_text(errors="replace")[-5000:])
            raise
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as http:
            yield DevServer(url, key, folder, http)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def ui(browser: Browser, tmp_path: Path) -> Iterator[BrowserPage]:
    """A laptop-sized page; its context is closed afterwards."""
    opened = open_page(browser, tmp_path, LAPTOP)
    yield opened
    print(opened.traffic_report())  # shown when the test failed
    opened.page.context.close()


@pytest.fixture
def phone_ui(browser: Browser, tmp_path: Path) -> Iterator[BrowserPage]:
    """A phone-sized page; its context is closed afterwards."""
    opened = open_page(browser, tmp_path, PHONE)
    yield opened
    print(opened.traffic_report())  # shown when the test failed
    opened.page.context.close()
