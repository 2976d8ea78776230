"""Leader election for the reconciler: one PostgreSQL advisory lock, held on its own
connection for as long as this process leads. On SQLite (dev mode, one process) the
only process is always the leader."""

import logging

from sqlalchemy import Connection, Engine, text

logger = logging.getLogger(__name__)

#: The advisory lock key of Errand's reconciler ("errand" in ASCII).
RECONCILER_LOCK_KEY = 0x65727261_6E64


class LeaderLock:
    """Try to become, and stay, the single leader among all worker processes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Return whether this process leads now (taking the lock if it is free)."""
        if self._engine.dialect.name != "postgresql":
            return True
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))
                return True
            conn = self._engine.connect()
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": RECONCILER_LOCK_KEY}
            ).scalar()
            conn.commit()
            if got:
                self._conn = conn
                logger.info("this process now leads the reconciler")
                return True
            conn.close()
        except Exception:  # lost the connection, and with it the lock
            logger.warning("leader lock check failed", exc_info=True)
            self.release()
        return False

    def release(self) -> None:
        """Give up leadership (closing the connection frees the lock)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                logger.debug("closing the leader connection failed", exc_info=True)
            self._conn = None
