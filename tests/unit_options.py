"""Worker settings of the in-process test system: short leases and graces, fast passes."""

from typing import Any

TEST_WORKER_OPTIONS: dict[str, Any] = {
    "lease_s": 2.0,
    "heartbeat_s": 0.2,
    "cancel_grace_s": 0.5,
    "reconcile_interval_s": 0.1,
}
