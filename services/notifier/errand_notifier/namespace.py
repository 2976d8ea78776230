"""The Socket.IO namespace: authenticate on connect, subscribe to jobs with replay."""

import logging
import uuid
from typing import Any

import anyio.to_thread
import socketio
from pydantic import BaseModel, ValidationError

from errand_notifier.store import Store
from errand_schema.auth import Principal

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
        principal = await anyio.to_thread.run_sync(self._store.authenticate, token or "")
        if principal is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "authentication failed", {"code": 4401}
            )
        await self.save_session(sid, {"principal": principal})
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
        principal: Principal = (await self.get_session(sid))["principal"]
        room = job_room(req.job_id)
        await self.enter_room(sid, room)
        snap = await anyio.to_thread.run_sync(
            self._store.snapshot, principal, req.job_id, req.last_seq, self._max_replay
        )
        if snap is None:
            await self.leave_room(sid, room)
            return {"ok": False, "error": "not_found"}
        return {"ok": True, "job": snap.job, "missed": snap.missed, "truncated": snap.truncated}

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Leave a job's room."""
        try:
            req = Subscribe.model_validate(data)
        except ValidationError:
            return {"ok": False, "error": "invalid_request"}
        await self.leave_room(sid, job_room(req.job_id))
        return {"ok": True}
