"""The readiness answer of the API and the notifier (``/readyz``)."""

from collections.abc import Mapping
from typing import Any

#: What the ``require`` parameter of ``/readyz`` says (both services' docs and probes).
REQUIRE_HELP = (
    "Only these checks are made, and they decide the status code (repeat it; all when"
    " absent): a probe must answer within its own timeout, and the check of a service"
    " that hangs takes seconds. The Kubernetes readiness probes ask for `database`"
    " alone: a service goes on without the broker or Redis, and a pod taken out of its"
    " Service serves nothing."
)


def readiness(checks: Mapping[str, bool], *, draining: bool = False) -> tuple[dict[str, Any], int]:
    """The body and status code of a readiness answer: ``ready`` (200),
    ``unavailable`` or ``draining`` (503)."""
    ok = not draining and all(checks.values())
    status = "draining" if draining else "ready" if ok else "unavailable"
    return {"status": status, "checks": dict(checks)}, 200 if ok else 503
