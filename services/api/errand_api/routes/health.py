"""Health probes: ``/healthz`` (process up) and ``/readyz`` (database, broker, Redis)."""

from collections.abc import Callable
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
    """Check the database, the broker and Redis (those in ``require``, when given);
    200 when every check made passes, else 503 naming what is down."""
    probes: dict[str, Callable[[], bool]] = {
        "database": lambda: _database_ok(services),
        "broker": services.publisher.is_reachable,
        "redis": services.redis_ping,
    }
    names = dict.fromkeys(require or probes)  # in order, once each
    body, code = readiness({name: probes[name]() for name in names})
    return JSONResponse(body, status_code=code)


def _database_ok(services: ServicesDep) -> bool:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # readiness probes report, they never raise
        return False
    return True
