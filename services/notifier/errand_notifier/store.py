"""The notifier's reads from PostgreSQL (run in a thread: the driver is synchronous)."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from errand_schema.auth import Principal, ensure_bootstrap_admin
from errand_schema.events import JobEventMessage
from errand_schema.jwt_auth import JwtVerifier, authenticate_token
from errand_schema.views import read_events_after, read_job_public


@dataclass(frozen=True)
class Snapshot:
    """A job's current view and the events a subscriber missed."""

    job: dict[str, Any]
    missed: list[dict[str, Any]]
    #: True when more events were missed than one ack carries.
    truncated: bool


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
