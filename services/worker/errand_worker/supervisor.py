"""Dramatiq's main process with Errand's logging (``python -m errand_worker.supervisor``).

Run with ``--skip-logging``, Dramatiq's processes log through the handlers configured
here and in :mod:`errand_worker.boot`, so every line is JSON when ``ERRAND_LOG_JSON``
is set, the main process's included.
"""

import shutil
import sys

from dramatiq.cli import main as dramatiq_main

from errand_schema.logging import configure_logging
from errand_worker.settings import get_settings, own_metrics_dir


def run() -> None:
    """Configure logging, then run Dramatiq's command line (arguments from ``sys.argv``);
    when it ends, remove the metrics folder ``errand worker`` made for this run (each
    start makes a new one: without this every restart left one in the temporary
    folder; a main process killed outright still leaves its own)."""
    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    folder = own_metrics_dir()
    try:
        code = dramatiq_main()  # type: ignore[no-untyped-call]
    finally:
        # Only the main process gets here: Dramatiq's forked worker processes end
        # with os._exit.
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    run()
