"""The registered job types, cached, and payload validation against their schemas."""

import threading
import time

from jsonschema import Draft202012Validator
from sqlmodel import Session

from errand_schema.models import JobType


class Catalog:
    """Job types registered by workers, re-read at most every ``ttl_s`` seconds each."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, JobType | None, Draft202012Validator | None]] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, name: str) -> tuple[JobType, Draft202012Validator] | None:
        """Return the type and its payload validator, or ``None`` if nobody serves it.

        Note:
            Reads through the caller's session: a second connection could wait on the
            caller's own lock (SQLite in dev mode locks the database per transaction).
        """
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is None or now - hit[0] > self._ttl_s:
            row = session.get(JobType, name)
            if row is not None:
                session.expunge(row)
            validator = Draft202012Validator(row.payload_schema) if row is not None else None
            hit = (now, row, validator)
            with self._lock:
                self._cache[name] = hit
        _, row, validator = hit
        if row is None or validator is None:
            return None
        return row, validator


def payload_errors(validator: Draft202012Validator, payload: object) -> list[dict[str, str]]:
    """Return ``[{field, message}]`` for each way ``payload`` breaks the schema."""
    out = []
    for err in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path)
        out.append({"field": "payload" + (f".{path}" if path else ""), "message": err.message})
    return out
