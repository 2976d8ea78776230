"""``GET /v1/jobs:export``: the filtered jobs as a stream of NDJSON or CSV."""

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from errand_api.deps import PrincipalDep, ServicesDep
from errand_api.export import MEDIA_TYPES, ExportFormat, export_jobs
from errand_api.routes.jobs import LabelQuery
from errand_api.search import job_filters, parse_labels
from errand_schema.queues import Priority
from errand_schema.states import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_STREAMS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The jobs, oldest first: one JSON object per line, or CSV rows.",
        "content": {"application/x-ndjson": {}, "text/csv": {}},
    },
    422: {"description": "Invalid filter"},
}


@router.get(":export", response_class=StreamingResponse, responses=_STREAMS)
def export(
    services: ServicesDep,
    principal: PrincipalDep,
    format: ExportFormat = "ndjson",
    events: Annotated[bool, Query(description="Add each job's events.")] = False,
    status: Annotated[list[JobStatus] | None, Query(description="Any of these.")] = None,
    type: Annotated[str | None, Query(max_length=200)] = None,
    priority: Priority | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in the type, id or error.")
    ] = None,
    owner: Annotated[uuid.UUID | None, Query(description="Admins: one user's jobs.")] = None,
    label: LabelQuery = None,
) -> StreamingResponse:
    """Stream your jobs (every job for admins) matching the filters of ``GET /v1/jobs``,
    oldest first, as NDJSON (each line a job as listed, masked) or CSV; with
    ``events=true`` each job carries its events. Read page by page: any number of jobs."""
    where = job_filters(
        principal,
        status=[str(s) for s in status] if status else None,
        job_type=type,
        priority=priority,
        created_after=created_after,
        created_before=created_before,
        q=q,
        owner=owner,
        labels=parse_labels(label),
    )
    return StreamingResponse(
        export_jobs(services.engine, where, format, events=events),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="jobs.{format}"'},
    )
