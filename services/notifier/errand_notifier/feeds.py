"""Feeds beside job events: ``queue_stats`` to the admin room every tick, and
``user_stats`` (a user's unfinished jobs, for a header indicator) when they change."""

import asyncio
import logging
import uuid

import anyio.to_thread
import socketio

from errand_notifier import transport
from errand_notifier.fanout import Fanout
from errand_notifier.rooms import ADMIN_ROOM, user_room
from errand_notifier.store import Store

logger = logging.getLogger(__name__)

#: Users whose ``user_stats`` are read in one query.
USERS_PER_QUERY = 500


class Feeds:
    """Computes the feeds from PostgreSQL and sends them to the local rooms."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        fanout: Fanout,
        store: Store,
        admin_interval_s: float,
        user_interval_s: float,
    ) -> None:
        self._sio = sio
        self._fanout = fanout
        self._store = store
        self._admin_interval_s = admin_interval_s
        self._user_interval_s = user_interval_s
        self._dirty_users: set[uuid.UUID] = set()

    def user_changed(self, user_id: uuid.UUID) -> None:
        """A job of ``user_id`` changed state (or the user connected): refresh soon."""
        if transport.room_size(self._sio, user_room(user_id)):
            self._dirty_users.add(user_id)

    async def run_admin(self) -> None:
        """Send ``queue_stats`` to the local admin room every tick, until cancelled."""
        while True:
            await asyncio.sleep(self._admin_interval_s)
            if not transport.room_size(self._sio, ADMIN_ROOM):
                continue
            try:
                data = await anyio.to_thread.run_sync(self._store.queue_stats)
                await self._fanout.broadcast("queue_stats", data, [ADMIN_ROOM])
            except Exception:  # a process boundary: a database hiccup skips one tick
                logger.warning("queue_stats tick failed", exc_info=True)

    async def run_users(self) -> None:
        """Send ``user_stats`` to users whose jobs changed, until cancelled."""
        while True:
            await asyncio.sleep(self._user_interval_s)
            dirty, self._dirty_users = list(self._dirty_users), set()
            for start in range(0, len(dirty), USERS_PER_QUERY):
                chunk = dirty[start : start + USERS_PER_QUERY]
                try:
                    feeds = await anyio.to_thread.run_sync(self._store.user_stats, chunk)
                    for user_id, data in feeds.items():
                        await self._fanout.broadcast("user_stats", data, [user_room(user_id)])
                except Exception:  # a process boundary: retried at the next change
                    logger.warning("user_stats of %d users failed", len(chunk), exc_info=True)
