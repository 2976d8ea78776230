"""``errand dev`` for the browser tests: the same one-process system, with test job types.

Run as ``python devserver.py PORT DATA_DIR API_KEY`` (the tests start and stop it).
"""

import sys
from pathlib import Path

import uvicorn

from errand.dev import build_dev_system
from errand_schema.logging import configure_logging

from unit_options import TEST_WORKER_OPTIONS


def main() -> None:
    """Serve API, notifier and dashboard on 127.0.0.1:PORT until terminated."""
    port, data_dir, api_key = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    configure_logging("INFO")
    system = build_dev_system(
        data_dir,
        threads=4,
        api_key=api_key,
        job_modules=["browser_jobs"],
        worker_options=TEST_WORKER_OPTIONS,
    )
    system.worker.start()
    try:
        uvicorn.run(system.app, host="127.0.0.1", port=port, log_config=None)
    finally:
        system.close()


if __name__ == "__main__":
    main()
