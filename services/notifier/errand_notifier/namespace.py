"""The Socket.IO namespace: authenticate on connect, subscribe to jobs with replay."""

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any, NoReturn

import anyio.to_thread
import socketio
from pydantic import BaseModel, ValidationError

from errand_notifier import metrics
from errand_notifier.fanout import DISCONNECT_REASON_EVENT
from errand_notifier.hub import Hub
from errand_notifier.rooms import ADMIN_ROOM, job_room, user_room
from errand_schema.auth import Principal
from errand_schema.models import utcnow

logger = logging.getLogger(__name__)

#: Codes in the ``data`` of a refused connection (like HTTP's, in the 4xxx range).
CODE_UNAUTHORIZED, CODE_TOO_MANY, CODE_UNAVAILABLE = 4401, 4429, 4503


class Subscribe(BaseModel):
    """Body of a ``subscribe`` request."""

    job_id: uuid.UUID
    last_seq: int | None = None


def _refuse(message: str, code: int, reason: str) -> NoReturn:
    metrics.CONNECTIONS_REFUSED.labels(reason).inc()
    raise socketio.exceptions.ConnectionRefusedError(message, {"code": code, "reason": reason})


class JobsNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Default namespace: ``subscribe`` / ``unsubscribe`` to ``job:<id>`` rooms."""

    def __init__(self, hub: Hub, namespace: str = "/") -> None:
        super().__init__(namespace)
        self.hub = hub
        self._per_user: Counter[uuid.UUID] = Counter()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Authenticate with ``auth={"token": ...}``; join the user's room.

        Raises:
            socketio.exceptions.ConnectionRefusedError: The token is missing or invalid
                (``authentication failed``), this replica is full or shutting down
                (``server_full``, ``shutting_down``: try another), or the user holds
                too many connections here (``too_many_connections``; admins are not
                limited).
        """
        settings = self.hub.settings
        if self.hub.draining:
            _refuse("shutting_down", CODE_UNAVAILABLE, "shutting_down")
        if self.hub.fanout.client_count() >= settings.max_connections:
            _refuse("server_full", CODE_UNAVAILABLE, "server_full")
        token = auth.get("token") if isinstance(auth, dict) else None
        found = await anyio.to_thread.run_sync(self.hub.store.authenticate, token or "")
        if found is None:
            _refuse("authentication failed", CODE_UNAUTHORIZED, "unauthorized")
        principal, expires_at = found
        held = self._per_user[principal.user_id]
        if held >= settings.max_connections_per_user and not principal.is_admin:
            _refuse("too_many_connections", CODE_TOO_MANY, "too_many_connections")
        if self.hub.fanout.client_count() >= settings.max_connections or self.hub.draining:
            _refuse("server_full", CODE_UNAVAILABLE, "server_full")
        self._per_user[principal.user_id] += 1
        self.hub.fanout.add_client(sid)
        metrics.CONNECTIONS.inc()
        await self.save_session(sid, {"principal": principal, "token": token})
        if expires_at is not None:
            delay = max(0.0, (expires_at - utcnow()).total_seconds())
            self._timers[sid] = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._expire(sid))
            )
        await self.enter_room(sid, user_room(principal.user_id))
        if principal.is_admin:
            await self.enter_room(sid, ADMIN_ROOM)
        self.hub.feeds.user_changed(principal.user_id)
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
        found = await anyio.to_thread.run_sync(self.hub.store.authenticate, session["token"])
        if found is None:
            return {"ok": False, "error": "unauthorized"}
        principal: Principal = found[0]
        room = job_room(req.job_id)
        await self.enter_room(sid, room)
        snap = await anyio.to_thread.run_sync(
            self.hub.store.snapshot,
            principal,
            req.job_id,
            req.last_seq,
            self.hub.settings.max_replay,
        )
        if snap is None:
            await self.leave_room(sid, room)
            return {"ok": False, "error": "not_found"}
        self.hub.fanout.acked(sid, str(req.job_id), snap.seq)
        self.hub.catchup.note(req.job_id, snap.seq)
        return {"ok": True, "job": snap.job, "missed": snap.missed, "truncated": snap.truncated}

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Leave a job's room."""
        try:
            req = Subscribe.model_validate(data)
        except ValidationError:
            return {"ok": False, "error": "invalid_request"}
        await self.leave_room(sid, job_room(req.job_id))
        return {"ok": True}

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        """Count the connection out (only authenticated ones were counted in)."""
        session = await self.get_session(sid)
        principal: Principal | None = session.get("principal")
        if principal is None:
            return
        self._per_user[principal.user_id] -= 1
        if self._per_user[principal.user_id] <= 0:
            del self._per_user[principal.user_id]
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()
        self.hub.fanout.remove_client(sid)
        self.hub.heap.client_left()
        metrics.CONNECTIONS.dec()

    async def _expire(self, sid: str) -> None:
        """Tell a client its token expired, then disconnect it."""
        self._timers.pop(sid, None)
        metrics.DISCONNECTS.labels("token_expired").inc()
        await self.hub.fanout.send_to(sid, "session_expired", {"reason": "token expired"})
        notice = {"reason": "token_expired", "reconnect": False}
        await self.hub.fanout.send_to(sid, DISCONNECT_REASON_EVENT, notice)
        await self.disconnect(sid)
