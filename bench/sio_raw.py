"""A minimal Socket.IO client (Engine.IO 4 over a websocket) for thousands of connections.

python-socketio's ``AsyncClient`` costs an aiohttp session, a few tasks and their
buffers per connection, which on two cores and a shared loop would measure the client
more than the notifier at 10,000 connections. This client speaks the same protocol on
the wire (``EIO=4&transport=websocket``, ``40`` connect with auth, ``42`` events,
``43`` acks, ``2``/``3`` ping/pong) with one websocket and one reader task per client,
and keeps each event as received (time, raw text) so parsing happens after the run.
"""

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp

#: Every receipt of every client: (receive time, raw ``42[...]`` text).
Receipts = list[tuple[float, str]]


class Refused(Exception):
    """The server refused the Socket.IO connection (``44``)."""


class RawSocketIO:
    """One Socket.IO connection to the default namespace."""

    _ack_ids = itertools.count(1)

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, sink: Receipts) -> None:
        self._http = http
        self._url = f"{url.rstrip('/')}/socket.io/?EIO=4&transport=websocket"
        self._token = token
        self._sink = sink
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        #: The server (or the network) closed this connection; we did not.
        self.dropped = False

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Open the websocket and the namespace, authenticating with the token."""
        # autoping: aiohttp answers the server's websocket-level pings (uvicorn sends
        # them every 20 s); Engine.IO's own pings ("2") are answered below.
        ws = await self._http.ws_connect(self._url, autoping=True, max_msg_size=0)
        self._ws = ws
        async with asyncio.timeout(timeout_s):
            first = await ws.receive_str()
            if not first.startswith("0"):
                raise Refused(f"unexpected open packet {first[:80]!r}")
            await ws.send_str("40" + json.dumps({"token": self._token}))
            while True:
                data = await ws.receive_str()
                if data == "2":
                    await ws.send_str("3")
                elif data.startswith("40"):
                    break
                elif data.startswith("44"):
                    raise Refused(data[2:200])
        self._reader = asyncio.create_task(self._read())

    async def emit_with_ack(self, event: str, data: Any, timeout_s: float = 30.0) -> Any:
        """Emit ``event`` and wait for its ack's first argument."""
        assert self._ws is not None
        ack_id = next(self._ack_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self._ws.send_str(f"42{ack_id}" + json.dumps([event, data]))
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._acks.pop(ack_id, None)

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data: str = msg.data
            if data.startswith("42"):
                self._sink.append((time.time(), data))
            elif data == "2":
                await ws.send_str("3")
            elif data.startswith("43"):
                self._resolve(data)
            elif data.startswith("41"):
                break
        self.dropped = not self._closing

    def _resolve(self, data: str) -> None:
        body = data[2:]
        digits = len(body) - len(body.lstrip("0123456789"))
        ack_id, args = int(body[:digits]), json.loads(body[digits:])
        future = self._acks.get(ack_id)
        if future is not None and not future.done():
            future.set_result(args[0] if args else None)

    async def close(self) -> None:
        """Close the connection."""
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()


def parse_event(raw: str) -> dict[str, Any]:
    """The payload of a ``42["job_event", {...}]`` packet."""
    body = raw[2:]
    digits = len(body) - len(body.lstrip("0123456789"))
    name, payload = json.loads(body[digits:])[:2]
    return dict(payload) if name == "job_event" else {}


def session(limit: int = 0) -> aiohttp.ClientSession:
    """An aiohttp session for many websockets (no connection-count limit)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=True))
