"""Dramatiq's main process with Errand's logging (``python -m errand_worker.supervisor``).

Run with ``--skip-logging``, Dramatiq's processes log through the handlers configured
here and in :mod:`errand_worker.boot`, so every line is JSON when ``ERRAND_LOG_JSON``
is set, the main process's included.
"""

import sys

from dramatiq.cli import main as dramatiq_main

from errand_schema.logging import configure_logging
from errand_worker.settings import get_settings


def run() -> None:
    """Configure logging, then run Dramatiq's command line (arguments from ``sys.argv``)."""
    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    sys.exit(dramatiq_main())  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    run()
