"""Health probes: ``/healthz`` (process up) and ``/readyz`` (database and broker)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from errand_api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer while the process runs."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    """Answer 200 when the database, the broker and Redis are reachable, else 503."""
    checks = {
        "database": _database_ok(services),
        "broker": services.publisher.is_reachable(),
        "redis": services.redis_ping(),
    }
    ok = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


def _database_ok(services: ServicesDep) -> bool:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # readiness probes report, they never raise
        return False
    return True
