"""The readiness answer of the API and the notifier (``/readyz``)."""

from collections.abc import Mapping, Sequence
from typing import Any

#: What the ``require`` parameter of ``/readyz`` says (both services' docs and probes).
REQUIRE_HELP = (
    "Checks that decide the status code (repeat it; all when absent). The others are"
    " still reported: the Kubernetes readiness probes ask for `database` alone, since a"
    " service goes on without the broker or Redis, and a pod taken out of its Service"
    " serves nothing."
)


def readiness(
    checks: Mapping[str, bool], require: Sequence[str] | None, *, draining: bool = False
) -> tuple[dict[str, Any], int]:
    """The body and status code of a readiness answer: ``ready``; ``degraded`` (the
    required checks pass, another fails); ``unavailable``; ``draining`` (always 503).

    Raises:
        KeyError: ``require`` names a check that is not made.
    """
    ok = not draining and all(checks[name] for name in (require or checks))
    if draining:
        status = "draining"
    elif not ok:
        status = "unavailable"
    else:
        status = "ready" if all(checks.values()) else "degraded"
    return {"status": status, "checks": dict(checks)}, 200 if ok else 503
