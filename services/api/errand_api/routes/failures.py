"""``GET /v1/admin/failures``: what fails, where, how often, and whether retries helped."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from errand_api.deps import AdminDep, SessionDep
from errand_api.failures import FailuresPublic, failure_report
from errand_api.schemas import MAX_AGE_S
from errand_schema.models import utcnow

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/failures", response_model=FailuresPublic)
def list_failures(
    session: SessionDep,
    _admin: AdminDep,
    since_s: Annotated[
        float, Query(gt=0, le=MAX_AGE_S, description="Look this many seconds back.")
    ] = 86_400.0,
    type: Annotated[str | None, Query(max_length=200, description="Only this job type.")] = None,
) -> FailuresPublic:
    """Failed attempts grouped by job type, step and error fingerprint (class and message
    with numbers, ids and quoted strings masked), most frequent first: counts, first and
    last seen, example job ids, and how many of the jobs recovered or ended dead."""
    return failure_report(session, utcnow() - timedelta(seconds=since_s), type)
