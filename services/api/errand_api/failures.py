"""Failure analysis: failed attempts grouped by job type, step and error fingerprint.

A fingerprint is the error class plus its message with the parts that vary from one
occurrence to the next replaced: quoted strings, UUIDs, hex and numbers. So
``order 1234 not found`` and ``order 98 not found`` are one kind of failure. Each group
says how its jobs ended: ``recovered`` (completed later, after a retry) or ``dead``
(dead or failed); the rest are still unfinished or were cancelled.
"""

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, select
from sqlmodel import Session, col

from errand_schema.models import Job, JobAttempt, JobStep
from errand_schema.states import JobStatus

#: Attempt outcomes that count as failures (``interrupted`` is a shutdown, not one).
FAILED_OUTCOMES = ("failed", "timeout", "lost")
#: Example job ids kept per group.
EXAMPLES = 5
#: Most attempts one report reads (newest first); the report says when it stopped.
MAX_ATTEMPTS_READ = 100_000
#: Attempts read per round trip.
READ_BATCH = 1000

_NORMALISERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
            r"[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]


def normalise_message(message: str) -> str:
    """Return ``message`` with its varying parts (strings, ids, numbers) replaced."""
    for pattern, token in _NORMALISERS:
        message = pattern.sub(token, message)
    return " ".join(message.split())[:500]


def fingerprint(error_type: str, message: str) -> str:
    """Return a short stable id of an error kind (class + normalised message)."""
    digest = hashlib.sha256(f"{error_type}\n{normalise_message(message)}".encode())
    return digest.hexdigest()[:16]


class FailureGroup(BaseModel):
    """One kind of failure of one step of one job type."""

    type: str
    step: str | None
    error_type: str
    #: The normalised message shared by the group.
    pattern: str
    fingerprint: str
    #: Failed attempts, and distinct jobs they belong to.
    count: int
    jobs: int
    first_seen_at: datetime
    last_seen_at: datetime
    example_job_ids: list[uuid.UUID]
    #: Jobs that completed in the end, and jobs that ended dead or failed.
    recovered: int
    dead: int


class FailuresPublic(BaseModel):
    """``GET /v1/admin/failures``: the groups, most frequent first."""

    since: datetime
    data: list[FailureGroup]
    count: int
    #: True when more than ``MAX_ATTEMPTS_READ`` attempts matched (the oldest were left).
    truncated: bool = False


@dataclass
class _Tally:
    type: str
    step: str | None
    error_type: str
    pattern: str
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    statuses: dict[uuid.UUID, str] = field(default_factory=dict)

    def add(self, job_id: uuid.UUID, status: str, at: datetime) -> None:
        self.count += 1
        self.first = at if self.first is None or at < self.first else self.first
        self.last = at if self.last is None or at > self.last else self.last
        self.statuses[job_id] = status

    def public(self, key: str) -> FailureGroup:
        assert self.first is not None
        assert self.last is not None
        ended = list(self.statuses.values())
        return FailureGroup(
            type=self.type,
            step=self.step,
            error_type=self.error_type,
            pattern=self.pattern,
            fingerprint=key,
            count=self.count,
            jobs=len(self.statuses),
            first_seen_at=self.first,
            last_seen_at=self.last,
            example_job_ids=list(self.statuses)[:EXAMPLES],
            recovered=sum(s == JobStatus.COMPLETED for s in ended),
            dead=sum(s in (JobStatus.DEAD, JobStatus.FAILED) for s in ended),
        )


def failure_report(session: Session, since: datetime, job_type: str | None) -> FailuresPublic:
    """Group the failed attempts that started at or after ``since`` (of one type, if
    given), reading them in batches (the groups, not the attempts, stay in memory)."""
    columns: list[Any] = [
        col(JobAttempt.job_id),
        col(JobAttempt.error_type),
        col(JobAttempt.error_message),
        col(JobAttempt.started_at),
        col(Job.type),
        col(Job.status),
        col(JobStep.name),
    ]
    stmt = (
        select(*columns)
        .select_from(JobAttempt)
        .join(Job, col(Job.id) == col(JobAttempt.job_id))
        .outerjoin(
            JobStep,
            and_(
                col(JobStep.job_id) == col(JobAttempt.job_id),
                col(JobStep.index) == col(JobAttempt.step_index),
            ),
        )
        .where(
            col(JobAttempt.outcome).in_(FAILED_OUTCOMES),
            col(JobAttempt.started_at) >= since,
        )
        .order_by(col(JobAttempt.started_at).desc())
        .limit(MAX_ATTEMPTS_READ + 1)
        .execution_options(yield_per=READ_BATCH)
    )
    if job_type:
        stmt = stmt.where(col(Job.type) == job_type)
    # A plain Core select through the connection: seven columns, streamed in batches.
    groups, read = _tally(session.connection().execute(stmt))
    data = sorted(
        (tally.public(key[2]) for key, tally in groups.items()),
        key=lambda g: (-g.count, g.type, g.step or "", g.fingerprint),
    )
    return FailuresPublic(
        since=since, data=data, count=len(data), truncated=read > MAX_ATTEMPTS_READ
    )


#: A group's key: (job type, step name, error fingerprint).
_GroupKey = tuple[str, str | None, str]


def _tally(rows: Iterable[Any]) -> tuple[dict[_GroupKey, _Tally], int]:
    groups: dict[_GroupKey, _Tally] = {}
    read = 0
    for job_id, error_type, message, at, type_name, status, step in rows:
        read += 1
        if read > MAX_ATTEMPTS_READ:
            break
        kind = error_type or "WorkerLost"
        text = message or ""
        group_key = (type_name, step, fingerprint(kind, text))
        tally = groups.get(group_key)
        if tally is None:
            tally = groups[group_key] = _Tally(type_name, step, kind, normalise_message(text))
        tally.add(job_id, status, at)
    return groups, read
