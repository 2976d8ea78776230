"""Process entry point: ``python -m errand_worker`` (and ``errand worker``)."""

import os
import sys

from errand_worker.broker import build_registry
from errand_worker.settings import dramatiq_environment, get_settings

#: Extra time Dramatiq waits for threads after the steps' own shutdown grace.
SHUTDOWN_MARGIN_S = 5


def run() -> None:
    """Replace this process with the Dramatiq CLI, configured from ``ERRAND_*``.

    Exec (not a child process) so that signals, SIGTERM above all, reach Dramatiq,
    which then stops consuming and lets running steps finish within the grace period.
    """
    settings = get_settings()
    queues = sorted(set(settings.queues) | build_registry(settings).queues())
    timeout_ms = int((settings.shutdown_grace_s + SHUTDOWN_MARGIN_S) * 1000)
    args = [
        sys.executable,
        "-m",
        "errand_worker.supervisor",
        "errand_worker.boot",
        "--skip-logging",
        "--processes",
        str(settings.processes),
        "--threads",
        str(settings.threads),
        "--worker-shutdown-timeout",
        str(timeout_ms),
        "--queues",
        *queues,
    ]
    os.execve(sys.executable, args, dramatiq_environment(settings))  # noqa: S606
