"""The notifier's reads from PostgreSQL (run in a thread: the driver is synchronous)."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Integer, Uuid, column, text
from sqlmodel import Session, col, select

from errand_notifier import stats
from errand_schema.auth import Principal, ensure_bootstrap_admin
from errand_schema.events import JobEventMessage
from errand_schema.jwt_auth import JwtVerifier, authenticate_token
from errand_schema.models import Job
from errand_schema.views import read_events_after, read_job_public

#: Job ids looked up in one query.
TYPES_PER_QUERY = 500
#: The jobs whose latest seq is above the one given for each (PostgreSQL).
HEADS_AFTER = text(
    "SELECT j.id, j.owner_id, j.seq"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:seqs AS bigint[])) AS held(id, seq)"
    " JOIN jobs AS j ON j.id = held.id WHERE j.seq > held.seq"
).columns(column("id", Uuid()), column("owner_id", Uuid()), column("seq", Integer()))


@dataclass(frozen=True)
class Snapshot:
    """A job's current view and the events a subscriber missed."""

    job: dict[str, Any]
    missed: list[dict[str, Any]]
    #: True when more events were missed than one ack carries: ``job`` is then the
    #: state to trust, and ``missed`` only the oldest of them.
    truncated: bool

    @property
    def seq(self) -> int:
        """The highest seq the ack covers."""
        last_missed = int(self.missed[-1]["seq"]) if self.missed else 0
        return max(int(self.job["seq"]), last_missed)


@dataclass(frozen=True)
class JobHead:
    """Who owns a job and its latest seq."""

    owner_id: uuid.UUID
    seq: int


class Store:
    """Authentication and job reads for the notifier."""

    def __init__(self, engine: Engine, jwt: JwtVerifier | None = None) -> None:
        self._engine = engine
        self._jwt = jwt

    def authenticate(self, token: str) -> tuple[Principal, datetime | None] | None:
        """Return the caller ``token`` identifies (and a JWT's expiry), or ``None``."""
        with Session(self._engine) as session:
            found = authenticate_token(session, token, self._jwt)
            session.commit()
            return found

    def ensure_bootstrap_admin(self, token: str) -> None:
        """Create the bootstrap admin key if it does not exist."""
        with Session(self._engine) as session:
            ensure_bootstrap_admin(session, token)

    def snapshot(
        self, principal: Principal, job_id: uuid.UUID, last_seq: int | None, limit: int
    ) -> Snapshot | None:
        """Return the job and the events after ``last_seq``; ``None`` if not the caller's."""
        with Session(self._engine) as session:
            found = read_job_public(session, job_id, masked=True)
            if found is None:
                return None
            job, view = found
            if not principal.is_admin and job.owner_id != principal.user_id:
                return None
            rows = (
                read_events_after(session, job_id, last_seq, limit + 1)
                if (last_seq is not None)
                else []
            )
        missed = [JobEventMessage.from_row(r, job.owner_id).to_client() for r in rows[:limit]]
        return Snapshot(view.model_dump(mode="json"), missed, len(rows) > limit)

    def heads_after(self, known: dict[uuid.UUID, int]) -> dict[uuid.UUID, JobHead]:
        """Return the owner and latest seq of each job whose latest seq is above the one
        given for it (a negative one: any job that exists).

        Note:
            The catch-up asks this of every held job every few seconds and nearly all
            are up to date. On PostgreSQL one statement compares them all (two array
            parameters) and returns only the jobs behind, so neither the event loop's
            thread hop nor the rows cost per held job; elsewhere (SQLite in dev mode)
            the jobs are read in chunks and compared here.
        """
        if not known:
            return {}
        with Session(self._engine) as session:
            if self._engine.dialect.name == "postgresql":
                ids, seqs = list(known), list(known.values())
                result = session.connection().execute(HEADS_AFTER, {"ids": ids, "seqs": seqs})
                return {job_id: JobHead(owner, seq) for job_id, owner, seq in result}
            found: dict[uuid.UUID, JobHead] = {}
            ids = list(known)
            for start in range(0, len(ids), TYPES_PER_QUERY):
                chunk = ids[start : start + TYPES_PER_QUERY]
                rows = session.exec(
                    select(Job.id, Job.owner_id, Job.seq).where(col(Job.id).in_(chunk))
                ).all()
                found.update(
                    {job_id: JobHead(o, seq) for job_id, o, seq in rows if seq > known[job_id]}
                )
            return found

    def job_types(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Return the type of each job that exists (for ``jobs_summary``)."""
        found: dict[uuid.UUID, str] = {}
        with Session(self._engine) as session:
            for start in range(0, len(job_ids), TYPES_PER_QUERY):
                chunk = job_ids[start : start + TYPES_PER_QUERY]
                rows = session.exec(select(Job.id, Job.type).where(col(Job.id).in_(chunk))).all()
                found.update({job_id: job_type for job_id, job_type in rows})
        return found

    def events_after(
        self, job_id: uuid.UUID, owner_id: uuid.UUID, after_seq: int, limit: int
    ) -> list[JobEventMessage]:
        """Return the job's events after ``after_seq`` as wire events, oldest first."""
        with Session(self._engine) as session:
            rows = read_events_after(session, job_id, after_seq, limit)
        return [JobEventMessage.from_row(r, owner_id) for r in rows]

    def user_stats(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        """Return the ``user_stats`` feed of each user (unfinished jobs by status)."""
        with Session(self._engine) as session:
            return stats.user_stats(session, user_ids)

    def queue_stats(self) -> dict[str, Any]:
        """Return the ``queue_stats`` feed of the admin room."""
        with Session(self._engine) as session:
            return stats.queue_stats(session)
