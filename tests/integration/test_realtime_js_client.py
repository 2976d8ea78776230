"""The JavaScript client's own tests (``node --test`` in clients/js) against live services:
two notifier replicas, the API, a worker, and a port where nothing listens (the polling
fallback)."""

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import ServiceProcess, free_port, wait_http_ok

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is needed for the JavaScript client's tests (Node 20+)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_the_javascript_client_passes_its_tests_against_a_live_notifier(
    system: Any, start_service: Callable[..., ServiceProcess]
) -> None:
    node, npm = _tool("node"), _tool("npm")
    # Given the client's dependencies (installed once, exactly as locked)
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300)
    # And a second notifier replica
    port = free_port()
    second = start_service(
        f"notifier-js-{port}", ["notifier"], **{**system.env, "ERRAND_PORT": str(port)}
    )
    second_url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{second_url}/readyz", proc=second)
        # When node runs the client's tests against them
        env = {
            **os.environ,
            "ERRAND_API_URL": system.api_url,
            "ERRAND_NOTIFIER_URL": system.notifier_url,
            "ERRAND_NOTIFIER_URL_2": second_url,
            "ERRAND_API_KEY": system.make_user("rt-js"),
            "ERRAND_CLOSED_URL": f"http://127.0.0.1:{free_port()}",
        }
        result = subprocess.run(
            [node, "--test"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        second.stop()
    # Then every test ran and passed (none skipped: the live ones need these services)
    output = result.stdout + result.stderr
    failed = output[output.find("not ok") :] if "not ok" in output else output
    assert result.returncode == 0, failed[:6000]
    assert "# fail 0" in output, output[-3000:]
    assert "# skipped 0" in output, output[-3000:]
    assert "polls the API until the job ends" in output
