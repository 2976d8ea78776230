"""``Idempotency-Key`` on ``POST /v1/jobs``: the same key and body give the same job.

A key is kept for :data:`KEY_TTL` per user. The key row is written in the same
transaction as the job, under a primary key on (user, key): of two concurrent requests
with one key, one commits and the other finds its job.
"""

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, delete

from errand_api.errors import IdempotencyConflict
from errand_schema.models import IdempotencyKey, utcnow

#: How long a key stands for its job.
KEY_TTL = timedelta(hours=24)


def request_hash(body: dict[str, Any]) -> str:
    """Return the SHA-256 of the canonical JSON of a request body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_job_for_key(
    session: Session, user_id: uuid.UUID, key: str, body_hash: str
) -> uuid.UUID | None:
    """Return the job a live key stands for; drop an expired key.

    Raises:
        IdempotencyConflict: The key was used with another body.
    """
    row = session.get(IdempotencyKey, (user_id, key))
    if row is None:
        return None
    if row.created_at < utcnow() - KEY_TTL:
        session.delete(row)
        session.flush()
        return None
    if row.request_hash != body_hash:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body."
        )
    return row.job_id


def remember_key(
    session: Session, user_id: uuid.UUID, key: str, body_hash: str, job_id: uuid.UUID
) -> None:
    """Add the key row for a new job (the caller commits both together)."""
    session.flush()  # the job row first: the key row references it
    session.add(IdempotencyKey(user_id=user_id, key=key, request_hash=body_hash, job_id=job_id))


def delete_expired_keys(session: Session) -> int:
    """Delete keys older than :data:`KEY_TTL`; return how many."""
    result = session.exec(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < utcnow() - KEY_TTL)
    )
    return int(result.rowcount or 0)
