"""Listing jobs: filters, text search and keyset cursors that stay stable under inserts."""

import base64
import binascii
import contextlib
import json
import re
import uuid
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Boolean, ColumnElement, String, and_, cast, literal, literal_column, or_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel import Session, col, select

from errand_api.errors import InvalidJob
from errand_api.schemas import LABEL_KEY_PATTERN, MAX_LABEL_KEY, MAX_LABELS
from errand_schema.auth import Principal
from errand_schema.models import Job, JobStep

#: Sort orders a caller may ask for.
Sort = Literal["created_desc", "created_asc"]


def encode_cursor(job: Job) -> str:
    """Return an opaque cursor pointing just after ``job`` in the listing order."""
    raw = json.dumps([job.created_at.isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Decode a cursor.

    Raises:
        InvalidJob: The cursor was not made by :func:`encode_cursor`.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidJob(
            "The cursor is not valid.",
            [{"field": "cursor", "message": "not a cursor from this API"}],
        ) from exc


def job_filters(
    principal: Principal,
    *,
    status: list[str] | None = None,
    job_type: str | None = None,
    priority: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    q: str | None = None,
    owner: uuid.UUID | None = None,
    labels: list[tuple[str, str]] | None = None,
) -> list[ColumnElement[bool]]:
    """Return the WHERE clauses of a listing; non-admins see only their own jobs.

    ``labels`` are (key, value) pairs a job must all carry (see :func:`parse_labels`).
    """
    where: list[ColumnElement[bool]] = []
    if not principal.is_admin:
        where.append(col(Job.owner_id) == principal.user_id)
    elif owner is not None:
        where.append(col(Job.owner_id) == owner)
    if status:
        where.append(col(Job.status).in_(status))
    if job_type:
        where.append(col(Job.type) == job_type)
    if priority:
        where.append(col(Job.priority) == priority)
    if created_after:
        where.append(col(Job.created_at) >= created_after)
    if created_before:
        where.append(col(Job.created_at) < created_before)
    if q:
        where.append(_text_search(q))
    for key, value in labels or []:
        where.append(LabelIs(key, value))
    return where


#: ``'{}'::jsonb``: every labelled job's labels contain it (``LABELLED_SQL``).
EMPTY_OBJECT = "'{}'::jsonb"


class LabelIs(ColumnElement[bool]):
    """``jobs.labels[key] == value``: a containment test (``@>``) on PostgreSQL, which
    the GIN index ``ix_jobs_labels`` serves; a JSON lookup elsewhere (SQLite)."""

    type = Boolean()
    inherit_cache = False

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value


@compiles(LabelIs)
def _label_is(element: LabelIs, compiler: SQLCompiler, **kw: Any) -> str:
    match = col(Job.labels)[element.key].as_string() == element.value
    return str(compiler.process(match, **kw))


@compiles(LabelIs, "postgresql")
def _label_is_pg(element: LabelIs, compiler: SQLCompiler, **kw: Any) -> str:
    labels = col(Job.labels)
    wanted = cast(literal(json.dumps({element.key: element.value})), JSONB)
    # The partial index's predicate (LABELLED_SQL) with a literal, not a bound value, so
    # that the planner sees it holds in a prepared statement's generic plan too.
    labelled = labels.op("@>")(literal_column(EMPTY_OBJECT))
    return str(compiler.process(and_(labelled, labels.op("@>")(wanted)), **kw))


def parse_labels(values: list[str] | None) -> list[tuple[str, str]]:
    """Parse ``label=key:value`` query values (repeatable; a job must match all).

    Raises:
        InvalidJob: A value is not ``key:value`` with a valid key.
    """
    if len(values or []) > MAX_LABELS:
        raise InvalidJob(
            f"At most {MAX_LABELS} label filters.",
            [{"field": "label", "message": f"at most {MAX_LABELS}"}],
        )
    pairs = []
    for i, raw in enumerate(values or []):
        key, sep, value = raw.partition(":")
        if not sep or not re.fullmatch(LABEL_KEY_PATTERN, key) or len(key) > MAX_LABEL_KEY:
            raise InvalidJob(
                "A label filter is `key:value`.",
                [
                    {
                        "field": f"label.{i}",
                        "message": "expected key:value (key: letters, digits, _ . - /; at most 64)",
                    }
                ],
            )
        pairs.append((key, value))
    return pairs


def _text_search(q: str) -> ColumnElement[bool]:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    terms: list[ColumnElement[bool]] = [
        col(Job.type).ilike(pattern, escape="\\"),
        cast(col(Job.error), String).ilike(pattern, escape="\\"),
    ]
    with contextlib.suppress(ValueError):
        terms.append(col(Job.id) == uuid.UUID(q))
    return or_(*terms)


def list_jobs(
    session: Session,
    where: list[ColumnElement[bool]],
    *,
    sort: Sort,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], dict[uuid.UUID, list[JobStep]], str | None]:
    """Return one page of jobs, their steps, and the cursor of the next page (or None)."""
    desc = sort == "created_desc"
    if cursor:
        at, after_id = decode_cursor(cursor)
        if desc:
            where = [
                *where,
                or_(
                    col(Job.created_at) < at,
                    and_(col(Job.created_at) == at, col(Job.id) < after_id),
                ),
            ]
        else:
            where = [
                *where,
                or_(
                    col(Job.created_at) > at,
                    and_(col(Job.created_at) == at, col(Job.id) > after_id),
                ),
            ]
    order = (
        (col(Job.created_at).desc(), col(Job.id).desc())
        if desc
        else (col(Job.created_at).asc(), col(Job.id).asc())
    )
    jobs = list(session.exec(select(Job).where(*where).order_by(*order).limit(limit + 1)).all())
    more = len(jobs) > limit
    jobs = jobs[:limit]
    steps: dict[uuid.UUID, list[JobStep]] = {}
    if jobs:
        rows = session.exec(select(JobStep).where(col(JobStep.job_id).in_([j.id for j in jobs])))
        for row in rows:
            steps.setdefault(row.job_id, []).append(row)
    return jobs, steps, encode_cursor(jobs[-1]) if more and jobs else None
