"""Exporting jobs as NDJSON or CSV, streamed in keyset pages.

Each page is read in its own short transaction (oldest first, by ``(created_at, id)``),
turned into bytes and handed to the response, so memory stays that of one page however
many jobs match, and no long transaction holds the database.
"""

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, or_
from sqlmodel import Session, col, select

from errand_schema.models import Job, JobEvent, JobStep
from errand_schema.views import job_public

#: Formats of ``GET /v1/jobs:export``.
ExportFormat = Literal["ndjson", "csv"]
#: Media type of each format.
MEDIA_TYPES: dict[str, str] = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
#: Jobs read per page (and per transaction).
PAGE_SIZE = 500
#: Columns of the CSV export (JSON-valued ones hold JSON text).
CSV_COLUMNS = (
    "id",
    "type",
    "owner",
    "status",
    "priority",
    "queue",
    "progress",
    "step",
    "attempt",
    "max_attempts",
    "created_at",
    "started_at",
    "finished_at",
    "labels",
    "payload",
    "result",
    "error",
    "result_reused_from",
)


def export_jobs(
    engine: Engine,
    where: list[ColumnElement[bool]],
    fmt: ExportFormat,
    *,
    events: bool = False,
    page_size: int = PAGE_SIZE,
) -> Iterator[bytes]:
    """Yield the export of the jobs matching ``where``, one chunk per page.

    Args:
        engine: Where to read (each page in its own session).
        where: The listing's filters (scope included).
        fmt: ``ndjson`` (one job per line, as ``GET /v1/jobs/{id}`` shows it, masked)
            or ``csv`` (a header, then one row per job).
        events: Add each job's events (``events``: a list, or a JSON column in CSV).
        page_size: Jobs per page.
    """
    columns = CSV_COLUMNS + (("events",) if events else ())
    if fmt == "csv":
        yield _csv_line(columns)
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        with Session(engine) as session:
            jobs = _page(session, where, after, page_size)
            if not jobs:
                return
            ids = [j.id for j in jobs]
            steps = _steps(session, ids)
            history = _events(session, ids) if events else {}
            records = [_record(j, steps.get(j.id, []), history.get(j.id), events) for j in jobs]
            after = (jobs[-1].created_at, jobs[-1].id)
        if fmt == "ndjson":
            yield "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        else:
            yield b"".join(_csv_line(_csv_row(r, columns)) for r in records)
        if len(jobs) < page_size:
            return


def _page(
    session: Session,
    where: list[ColumnElement[bool]],
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Job]:
    clauses = list(where)
    if after is not None:
        at, last_id = after
        clauses.append(
            or_(col(Job.created_at) > at, and_(col(Job.created_at) == at, col(Job.id) > last_id))
        )
    stmt = (
        select(Job)
        .where(*clauses)
        .order_by(col(Job.created_at).asc(), col(Job.id).asc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())


def _steps(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[JobStep]]:
    out: dict[uuid.UUID, list[JobStep]] = {}
    stmt = select(JobStep).where(col(JobStep.job_id).in_(ids)).order_by(col(JobStep.index))
    for row in session.exec(stmt):
        out.setdefault(row.job_id, []).append(row)
    return out


def _events(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[JobEvent]]:
    out: dict[uuid.UUID, list[JobEvent]] = {}
    stmt = select(JobEvent).where(col(JobEvent.job_id).in_(ids)).order_by(col(JobEvent.seq))
    for row in session.exec(stmt):
        out.setdefault(row.job_id, []).append(row)
    return out


def _record(
    job: Job, steps: list[JobStep], history: list[JobEvent] | None, events: bool
) -> dict[str, Any]:
    record: dict[str, Any] = job_public(job, steps, masked=True).model_dump(mode="json")
    if events:
        record["events"] = [
            {
                "seq": e.seq,
                "type": e.type,
                "status": e.status,
                "from_status": e.from_status,
                "progress": e.progress,
                "step": e.step,
                "message": e.message,
                "data": e.data,
                "actor": e.actor,
                "at": e.at.isoformat(),
            }
            for e in history or []
        ]
    return record


def _csv_row(record: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    cells = []
    for name in columns:
        value = record.get(name)
        if value is None:
            cells.append("")
        elif isinstance(value, dict | list):
            cells.append(json.dumps(value, separators=(",", ":")))
        else:
            cells.append(str(value))
    return cells


def _csv_line(cells: tuple[str, ...] | list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue().encode()
