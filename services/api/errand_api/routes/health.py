"""Health probes: ``/healthz`` (process up) and ``/readyz`` (database, broker, Redis)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text

from errand_api.deps import ServicesDep
from errand_schema.health import REQUIRE_HELP, readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer while the process runs."""
    return {"status": "ok"}


#: What ``/readyz`` checks.
Check = Literal["database", "broker", "redis"]


@router.get("/readyz")
def readyz(
    services: ServicesDep,
    require: Annotated[
        list[Check] | None,
        Query(description=REQUIRE_HELP),
    ] = None,
) -> JSONResponse:
    """Report the database, the broker and Redis; 200 when the required ones (all by
    default) are reachable, else 503. ``degraded``: required ones up, another down."""
    checks = {
        "database": _database_ok(services),
        "broker": services.publisher.is_reachable(),
        "redis": services.redis_ping(),
    }
    return JSONResponse(*readiness(checks, require))


def _database_ok(services: ServicesDep) -> bool:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # readiness probes report, they never raise
        return False
    return True
