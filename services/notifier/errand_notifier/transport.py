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
  websocket's reader already ends the session of a silent client), and
  :func:`send_packet`, when it queues, puts on the queue directly
  (``AsyncSocket.send`` adds a coroutine, a ping-timeout check the server's service
  task makes anyway, and a log call per packet).
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
- The same environ holds a copy of every request header (``HTTP_*``), and its ASGI
  scope the raw header list: read when the client connects (the notifier's
  ``on_connect`` reads neither: the token comes in the ``auth`` payload), never after.
  :func:`adopt` drops both (~2 KB per client).
- Each Engine.IO socket's outgoing queue comes from ``AsyncServer.create_queue``: an
  ``asyncio.Queue``, three deques and an ``asyncio.Event`` (a fourth), ~2.5 KB per
  client even when empty. :func:`lighten` makes it a :class:`LeanQueue`, the part of
  that interface the library and the notifier use, holding nothing while empty.
- Waking a socket's writer task for each packet (the queue's put, the task's wake-up,
  its ``poll`` and the library's ``send`` coroutines) cost about as much as writing the
  frame. While the writer waits with nothing in hand (:meth:`LeanQueue.idle`: it takes
  every packet queued before it waits again), a packet written straight to the
  websocket cannot overtake one, so :func:`send_packet` writes it there; otherwise, or
  when uvicorn has paused writing (the transport's buffer passed its high-water mark:
  the kernel's send buffer is full, the client reads slowly), it queues it as before.
  :func:`lighten` gives the server an ASGI websocket class that tells the session's
  socket which uvicorn protocol it writes to (``websockets-sansio`` only; another
  protocol class, or an ASGI middleware wrapping ``send``, means the queue, always).
  Admin fan-out, 2,000 clients: the notifier's CPU per event ~100-110 -> ~65-90 ms
  (``bench/HISTORY.md``, "Fixed 2026-11-24, evening").
"""

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from typing import Any

import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.asgi import WebSocket as AsgiWebSocket
from engineio.async_socket import AsyncSocket
from socketio import packet as sio_packet

try:  # uvicorn's websocket protocol, when websockets is installed (it is, via uvicorn[standard])
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol as _SansIOProtocol,
    )
    from websockets.exceptions import InvalidState
except ImportError:  # pragma: no cover - another server or no websockets
    _SansIOProtocol = None  # type: ignore[assignment,misc]
    InvalidState = RuntimeError  # type: ignore[assignment,misc]  # nothing is wired then

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
    """Send one packet to a client, never waiting for the network: written to its
    websocket at once when its writer is idle and its connection takes data, else queued
    for its writer."""
    protocol = getattr(sock, "_wire", None)
    if (
        protocol is not None
        and sock.upgraded
        and sock.queue.idle()
        and protocol.writable.is_set()
        and protocol.initial_response is None
        and not protocol.close_sent
        and not protocol.disconnected
        and not protocol.transport.is_closing()
    ):
        data = pkt.encode()
        try:
            if isinstance(data, str):
                protocol.conn.send_text(data.encode())
            else:  # binary packets (the library's, never the notifier's JSON events)
                protocol.conn.send_binary(data)
        except InvalidState:
            pass  # closing: the writer finds out for itself, as with a queued packet
        else:
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
            return
    sock.queue.put_nowait(pkt)


def _wire_of(send: Any) -> Any | None:
    """The uvicorn websocket protocol behind an ASGI ``send``, if it is one whose frames
    :func:`send_packet` knows how to write."""
    protocol = getattr(send, "__self__", None)
    if _SansIOProtocol is not None and isinstance(protocol, _SansIOProtocol):
        return protocol
    return None


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


class LeanQueue:
    """What python-engineio and the notifier use of ``asyncio.Queue`` (unbounded):
    ``put``/``put_nowait``, ``get``/``get_nowait``, ``task_done``/``join``, ``qsize``,
    ``empty``, with the same semantics, including cancellation of a waiting ``get``.

    ``asyncio.Queue`` keeps three deques and an ``asyncio.Event`` for its life, ~2.5 KB;
    this keeps its items only while there are any, and a waiter list only once a
    ``get`` or ``join`` has waited.
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        """Whether no item waits."""
        return not self._items

    def idle(self) -> bool:
        """Whether no item waits and a ``get`` waits for one (its caller has nothing in
        hand: it takes every item it can before it waits again)."""
        if self._items or not self._getters:
            return False
        return not self._getters[0].done()

    def put_nowait(self, item: Any) -> None:
        """Add an item (never full) and wake a waiting ``get``."""
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._unfinished += 1
        _wake_one(self._getters)

    async def put(self, item: Any) -> None:
        """As :meth:`put_nowait` (an unbounded queue never waits to put)."""
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        """Take the oldest item.

        Raises:
            asyncio.QueueEmpty: No item waits.
        """
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        """Take the oldest item, waiting for one (as ``asyncio.Queue.get``: a cancelled
        wait passes a wake-up it received on to the next waiter)."""
        while not self._items:
            if self._getters is None:
                self._getters = []
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    _wake_one(self._getters)
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        """Mark one taken item done; wake ``join`` once none is left.

        Raises:
            ValueError: Called more times than items were put.
        """
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            joiners, self._joiners = self._joiners, None
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_result(None)

    async def join(self) -> None:
        """Wait until every item put was taken and marked done."""
        if self._unfinished == 0:
            return
        if self._joiners is None:
            self._joiners = []
        joiner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joiners.append(joiner)
        await joiner


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake the first waiter still waiting."""
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class _WiredWebSocket(AsgiWebSocket):  # type: ignore[misc]
    """python-engineio's ASGI websocket, telling the session's socket which connection
    it writes to (see :func:`send_packet`) once the session runs on this websocket, and
    until the websocket ends.

    The library's handler reads the next frame through :meth:`wait` in a loop; the first
    read after the session's ``upgraded`` is set names the connection, unless another
    websocket of the session already did (a client may open a second one while the
    first is upgrading: that one never becomes the session's transport).
    """

    _protocol: Any = None

    async def __call__(self, environ: dict[str, Any]) -> Any:
        self._protocol = _wire_of(environ.get("asgi.send"))
        try:
            return await super().__call__(environ)
        finally:
            sock = self._socket()
            if sock is not None and getattr(sock, "_wire", None) is self._protocol:
                sock._wire = None

    async def wait(self) -> Any:
        """Read the next frame (as the library's), naming this connection first when
        the session has just started running on it."""
        sock = self._socket()
        if (
            self._protocol is not None
            and sock is not None
            and sock.upgraded
            and getattr(sock, "_wire", None) is None
        ):
            sock._wire = self._protocol
        return await super().wait()

    def _socket(self) -> Any | None:
        return getattr(self.handler, "__self__", None)  # the socket's bound handler


def lighten(sio: socketio.AsyncServer) -> None:
    """Make the server's Engine.IO sockets queue their packets in a :class:`LeanQueue`,
    and let :func:`send_packet` write to their websockets."""

    def create_queue(*_args: Any, **_kwargs: Any) -> LeanQueue:
        return LeanQueue()

    sio.eio.create_queue = create_queue
    if sio.eio._async.get("websocket") is AsgiWebSocket:  # the server's own copy
        sio.eio._async = {**sio.eio._async, "websocket": _WiredWebSocket}


def _header_key(key: str) -> bool:
    """Whether an environ key holds a request header. Every other key stays: after the
    client connected, python-engineio still answers its first request through
    ``asgi.send`` and looks at the scope's type; uvicorn logs the scope's client and
    path when the connection ends."""
    return key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")


def adopt(sio: socketio.AsyncServer, eio_sid: str) -> None:
    """Give a session's Engine.IO socket the cheaper :meth:`_Socket.poll` (from its
    writer's next wait on), and drop what the session keeps of its first request but
    never reads again: the body reader, the request's headers, and the websocket
    handshake's request and response (see the module's docstring)."""
    sock = sio.eio.sockets.get(eio_sid)
    if type(sock) is AsyncSocket:
        sock.__class__ = _Socket
    environ = sio.environ.get(eio_sid)
    if environ is None:
        return
    environ.pop("wsgi.input", None)
    for key in [k for k in environ if _header_key(k)]:
        del environ[key]
    scope = environ.get("asgi.scope")
    if isinstance(scope, dict) and scope.get("headers"):
        scope["headers"] = []
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
