"""The few python-socketio / python-engineio internals the notifier relies on.

Kept in one module so a library upgrade has one place to check (verified with
python-socketio 5.18 and python-engineio 4.15):

- ``AsyncManager.emit`` starts one asyncio task per recipient; the fan-out here encodes
  a packet once and puts it on each recipient's Engine.IO queue directly instead
  (``AsyncSocket.send`` never waits: the queue is unbounded).
- That queue (``AsyncSocket.queue``) is the client's outgoing buffer. Its writer task
  blocks while the client's TCP window is full, so its length is how far behind the
  client is; the notifier bounds it.
- The writer task waits in ``AsyncSocket.poll``, whose ``asyncio.wait_for`` starts a
  task for every wait on Python 3.11: with the wake-ups it chains, a third of the
  notifier's CPU in the admin fan-out. :func:`adopt` gives a session's socket the
  same ``poll`` without that task (and, on a websocket, without a timer: the
  websocket's reader already ends the session of a silent client), and :func:`send_packet` puts on
  the queue directly (``AsyncSocket.send`` adds a coroutine, a ping-timeout check the
  server's service task makes anyway, and a log call per packet).
- The server keeps the environ of a session's first request for the session's life
  (``AsyncServer.environ``). python-engineio's ASGI driver puts a body reader in it
  (``wsgi.input``) whose class it defines anew on every request: ~2.5 KB per client
  (tracemalloc; 339 -> 324 MB at 5,000 clients). The first request's body is never
  read again (a websocket reads frames; a polling client's POSTs bring their own
  environ), so :func:`adopt` drops it.
- uvicorn's ``websockets-sansio`` protocol (the one ``ws="auto"`` picks with websockets
  installed; uvicorn 0.54) keeps the handshake's request and response, headers
  included, for the connection's life, reading them only to accept or refuse it:
  ~2 KB per client (324-326 -> 316 MB at 5,000). Once the handshake is complete,
  :func:`adopt` lets them go (the protocol's ``send`` is the environ's ``asgi.send``).
"""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from socketio import packet as sio_packet

try:  # uvicorn's websocket protocol, when websockets is installed (it is, via uvicorn[standard])
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol as _SansIOProtocol,
    )
except ImportError:  # pragma: no cover - another server or no websockets
    _SansIOProtocol = None  # type: ignore[assignment,misc]

#: The only namespace the notifier serves.
NAMESPACE = "/"


def encode_event(sio: socketio.AsyncServer, event: str, data: Any) -> eio_packet.Packet:
    """Return the Engine.IO packet of one Socket.IO event (encode once, send to many)."""
    pkt = sio.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event, data])
    encoded = pkt.encode()
    if isinstance(encoded, list):  # binary attachments: never in JSON job events
        raise TypeError("binary Socket.IO events are not supported here")
    return eio_packet.Packet(eio_packet.MESSAGE, encoded)


def participants(sio: socketio.AsyncServer, rooms: list[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(sid, eio_sid)`` of every local member of any of ``rooms``, once each."""
    yield from sio.manager.get_participants(NAMESPACE, rooms)


def room_size(sio: socketio.AsyncServer, room: str) -> int:
    """Return how many local clients are in ``room``."""
    members = sio.manager.rooms.get(NAMESPACE, {}).get(room)
    return len(members) if members else 0


def local_rooms(sio: socketio.AsyncServer) -> list[str]:
    """Return the named rooms with local members."""
    return [r for r, m in sio.manager.rooms.get(NAMESPACE, {}).items() if r is not None and m]


def eio_sid_of(sio: socketio.AsyncServer, sid: str) -> str | None:
    """Return the Engine.IO session of a Socket.IO session."""
    eio_sid: str | None = sio.manager.eio_sid_from_sid(sid, NAMESPACE)
    return eio_sid


def eio_socket(sio: socketio.AsyncServer, eio_sid: str) -> Any | None:
    """Return the open Engine.IO socket of a session, or ``None``."""
    sock = sio.eio.sockets.get(eio_sid)
    if sock is None or sock.closed or sock.closing:
        return None
    return sock


def queued_packets(sock: Any) -> int:
    """Return how many packets wait to be written to a client."""
    return int(sock.queue.qsize())


def send_packet(sock: Any, pkt: eio_packet.Packet) -> None:
    """Queue one packet for a client (never waits for the network)."""
    sock.queue.put_nowait(pkt)


class _Socket(AsyncSocket):  # type: ignore[misc]
    """``AsyncSocket`` whose writer waits for packets without a task per wait."""

    async def poll(self) -> list[eio_packet.Packet]:
        """Wait for packets to send to the client (as ``AsyncSocket.poll`` does)."""
        try:
            if self.upgraded:
                # The websocket's reader gives up on a silent client after the same
                # timeout and then puts the None that ends this writer.
                first = await self.queue.get()
            else:
                async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                    first = await self.queue.get()
            self.queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise eio_exceptions.QueueEmpty() from None
        if first is None:
            return []
        packets = [first]
        while True:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            if pkt is None:  # the end: leave it for the next poll, as the library does
                self.queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


def adopt(sio: socketio.AsyncServer, eio_sid: str) -> None:
    """Give a session's Engine.IO socket the cheaper :meth:`_Socket.poll` (from its
    writer's next wait on), and drop what the session keeps of its first request but
    never reads again: the body reader, and the websocket handshake's request and
    response (see the module's docstring)."""
    sock = sio.eio.sockets.get(eio_sid)
    if type(sock) is AsyncSocket:
        sock.__class__ = _Socket
    environ = sio.environ.get(eio_sid)
    if environ is None:
        return
    environ.pop("wsgi.input", None)
    protocol = getattr(environ.get("asgi.send"), "__self__", None)
    if (
        _SansIOProtocol is not None
        and isinstance(protocol, _SansIOProtocol)
        and protocol.handshake_complete
    ):
        # Read only while accepting (or refusing) the handshake, which is over.
        protocol.request = None  # type: ignore[assignment]
        protocol.response = None  # type: ignore[assignment]


async def evict(sio: socketio.AsyncServer, eio_sid: str, last_words: eio_packet.Packet) -> None:
    """Drop a client's backlog, queue ``last_words`` and close it without waiting.

    Note:
        The backlog is freed at once. The TCP connection of a client that never reads
        stays until the kernel gives up on it, holding at most one transport buffer.
    """
    sock = sio.eio.sockets.get(eio_sid)
    if sock is None:
        return
    while True:
        try:
            sock.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        sock.queue.task_done()
    disconnect = sio.packet_class(sio_packet.DISCONNECT, namespace=NAMESPACE).encode()
    for pkt in (last_words, eio_packet.Packet(eio_packet.MESSAGE, disconnect)):
        sock.queue.put_nowait(pkt)
    sock.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
    # abort: the CLOSE packet is queued above; close() must not wait on the queue.
    await sock.close(wait=False, abort=True, reason=sio.eio.reason.SERVER_DISCONNECT)
    with contextlib.suppress(KeyError):
        del sio.eio.sockets[eio_sid]
