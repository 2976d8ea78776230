"""The Socket.IO namespace: authenticate on connect, subscribe to jobs with replay."""

import asyncio
import logging
import uuid
from typing import Any

import anyio.to_thread
import socketio
from pydantic import BaseModel, ValidationError

from errand_notifier import metrics
from errand_notifier.store import Store
from errand_schema.auth import Principal
from errand_schema.models import utcnow

logger = logging.getLogger(__name__)


class Subscribe(BaseModel):
    """Body of a ``subscribe`` request."""

    job_id: uuid.UUID
    last_seq: int | None = None


def job_room(job_id: uuid.UUID | str) -> str:
    """Return the room of one job."""
    return f"job:{job_id}"


def user_room(user_id: uuid.UUID | str) -> str:
    """Return the room of every job of one user."""
    return f"user:{user_id}"


#: Room of operators: every event.
ADMIN_ROOM = "admin"


class JobsNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Default namespace: ``subscribe`` / ``unsubscribe`` to ``job:<id>`` rooms."""

    def __init__(self, store: Store, max_replay: int, namespace: str = "/") -> None:
        super().__init__(namespace)
        self._store = store
        self._max_replay = max_replay

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Authenticate with ``auth={"token": ...}``; join the user's room.

        Raises:
            socketio.exceptions.ConnectionRefusedError: The token is missing or invalid.
        """
        token = auth.get("token") if isinstance(auth, dict) else None
        found = await anyio.to_thread.run_sync(self._store.authenticate, token or "")
        if found is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "authentication failed", {"code": 4401}
            )
        principal, expires_at = found
        await self.save_session(sid, {"principal": principal, "token": token})
        metrics.CONNECTIONS.inc()
        if expires_at is not None:
            delay = max(0.0, (expires_at - utcnow()).total_seconds())
            asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._expire(sid))
            )
        await self.enter_room(sid, user_room(principal.user_id))
        if principal.is_admin:
            await self.enter_room(sid, ADMIN_ROOM)
        logger.debug("client %s connected as %s", sid, principal.name)

    async def on_subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Join a job's room; ack with the job and the events after ``last_seq``.

        Note:
            The room is joined before the snapshot is read, so no event falls between
            them; a client may see an event both live and in ``missed`` and drops the
            repeat by its seq.
        """
        try:
            req = Subscribe.model_validate(data)
        except ValidationError:
            return {"ok": False, "error": "invalid_request"}
        session = await self.get_session(sid)
        # Auth again on each subscribe: a key revoked since connecting is refused now.
        found = await anyio.to_thread.run_sync(self._store.authenticate, session["token"])
        if found is None:
            return {"ok": False, "error": "unauthorized"}
        principal: Principal = found[0]
        room = job_room(req.job_id)
        await self.enter_room(sid, room)
        snap = await anyio.to_thread.run_sync(
            self._store.snapshot, principal, req.job_id, req.last_seq, self._max_replay
        )
        if snap is None:
            await self.leave_room(sid, room)
            return {"ok": False, "error": "not_found"}
        return {"ok": True, "job": snap.job, "missed": snap.missed, "truncated": snap.truncated}

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        """Count the connection out (only authenticated ones were counted in)."""
        session = await self.get_session(sid)
        if session.get("principal") is not None:
            metrics.CONNECTIONS.dec()

    async def _expire(self, sid: str) -> None:
        """Tell a client its token expired, then disconnect it."""
        await self.emit("session_expired", {"reason": "token expired"}, to=sid)
        await self.disconnect(sid)

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Leave a job's room."""
        try:
            req = Subscribe.model_validate(data)
        except ValidationError:
            return {"ok": False, "error": "invalid_request"}
        await self.leave_room(sid, job_room(req.job_id))
        return {"ok": True}
