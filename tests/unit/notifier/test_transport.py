"""The notifier's Engine.IO socket: the cheaper ``poll`` keeps the library's behaviour."""

import asyncio

import pytest
import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.asgi import translate_request
from engineio.async_socket import AsyncSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from errand_notifier import transport


def _socket(*, upgraded: bool, wait_s: float = 0.05) -> tuple[socketio.AsyncServer, AsyncSocket]:
    sio = socketio.AsyncServer(async_mode="asgi")
    sio.eio.ping_interval = wait_s / 2
    sio.eio.ping_timeout = wait_s / 2
    sock = AsyncSocket(sio.eio, "eio-1")
    sock.upgraded = upgraded
    sio.eio.sockets["eio-1"] = sock
    transport.adopt(sio, "eio-1")
    return sio, sock


def _message(text: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, text)


async def test_poll_returns_every_queued_packet_in_order_and_stops_at_the_end() -> None:
    _, sock = _socket(upgraded=True)
    assert type(sock).__name__ == "_Socket"
    first, second = _message("a"), _message("b")
    transport.send_packet(sock, first)
    transport.send_packet(sock, second)
    transport.send_packet(sock, None)  # type: ignore[arg-type]  # the library's end marker
    assert await sock.poll() == [first, second]
    # the end marker stays for the next poll, which tells the writer to stop
    assert await sock.poll() == []


async def test_an_upgraded_socket_waits_for_a_packet_without_a_timer() -> None:
    _, sock = _socket(upgraded=True, wait_s=0.02)
    waiting = asyncio.create_task(sock.poll())
    await asyncio.sleep(0.1)  # five times the library's timeout: still waiting
    assert not waiting.done()
    pkt = _message("late")
    transport.send_packet(sock, pkt)
    assert await asyncio.wait_for(waiting, 5) == [pkt]


async def test_a_cancelled_wait_ends_the_writer_as_the_library_does() -> None:
    _, sock = _socket(upgraded=True)
    waiting = asyncio.create_task(sock.poll())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(eio_exceptions.QueueEmpty):
        await waiting


async def test_a_polling_socket_still_gives_up_after_the_ping_timeout() -> None:
    _, sock = _socket(upgraded=False, wait_s=0.05)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await asyncio.wait_for(sock.poll(), 5)


def test_adopt_leaves_unknown_sessions_and_other_socket_classes_alone() -> None:
    sio, sock = _socket(upgraded=True)
    transport.adopt(sio, "no-such-session")

    class Custom(AsyncSocket):  # type: ignore[misc]
        pass

    other = Custom(sio.eio, "eio-2")
    sio.eio.sockets["eio-2"] = other
    transport.adopt(sio, "eio-2")
    assert type(other) is Custom
    assert type(sock).__name__ == "_Socket"


async def test_adopt_drops_the_first_requests_body_reader_and_headers_and_keeps_the_rest() -> None:
    sio, _ = _socket(upgraded=True, wait_s=1.0)
    scope = {
        "type": "websocket",
        "path": "/socket.io/",
        "query_string": b"EIO=4&transport=websocket",
        "headers": [(b"origin", b"http://example.test")],
    }

    async def receive() -> dict[str, str]:
        return {"type": "websocket.connect"}

    async def send(_message: dict[str, object]) -> None:
        return None

    # The environ python-engineio's ASGI driver builds for the session's first request
    environ = await translate_request(scope, receive, send)
    assert "wsgi.input" in environ
    sio.environ["eio-1"] = environ
    transport.adopt(sio, "eio-1")
    assert "wsgi.input" not in sio.environ["eio-1"]
    assert not [k for k in environ if k.startswith("HTTP_")]
    assert scope["headers"] == []
    # what the library and uvicorn still read after the connect
    assert environ["asgi.scope"] is scope
    assert environ["asgi.send"] is send
    assert scope["type"] == "websocket"
    assert scope["path"] == "/socket.io/"
    assert environ["QUERY_STRING"] == "EIO=4&transport=websocket"
    transport.adopt(sio, "eio-1")  # twice: nothing left to drop, no error


@pytest.mark.parametrize("complete", [True, False])
def test_adopt_lets_a_completed_websocket_handshake_go(complete: bool) -> None:
    sio, _ = _socket(upgraded=True, wait_s=1.0)
    # uvicorn's protocol as it stands after (or during) the handshake; only the
    # attributes adopt() looks at
    protocol = object.__new__(WebSocketsSansIOProtocol)
    protocol.handshake_complete = complete
    request, response = object(), object()
    protocol.request, protocol.response = request, response  # type: ignore[assignment]
    sio.environ["eio-1"] = {"asgi.send": protocol.send}
    transport.adopt(sio, "eio-1")
    if complete:
        assert protocol.request is None
        assert protocol.response is None
    else:  # still needed to accept or refuse it
        assert protocol.request is request
        assert protocol.response is response


# -- LeanQueue: asyncio.Queue's behaviour, as python-engineio and the notifier use it --


async def test_lean_queue_gives_items_in_order_and_counts_them() -> None:
    queue = transport.LeanQueue()
    assert queue.empty()
    assert queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    for item in ("a", "b", None):
        await queue.put(item)
    assert queue.qsize() == 3
    assert not queue.empty()
    assert [await queue.get(), queue.get_nowait(), queue.get_nowait()] == ["a", "b", None]
    assert queue.empty()


async def test_lean_queue_wakes_a_waiting_get_and_its_join_waits_for_task_done() -> None:
    queue = transport.LeanQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait("x")
    assert await asyncio.wait_for(waiting, 5) == "x"
    joined = asyncio.create_task(queue.join())
    await asyncio.sleep(0)
    assert not joined.done()  # taken but not marked done
    queue.task_done()
    await asyncio.wait_for(joined, 5)
    await asyncio.wait_for(queue.join(), 5)  # nothing unfinished: returns at once
    with pytest.raises(ValueError, match="too many times"):
        queue.task_done()


async def test_lean_queue_passes_a_wake_up_on_when_the_woken_get_was_cancelled() -> None:
    queue = transport.LeanQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")  # wakes the first waiter...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "only"
    assert first.cancelled()
    assert queue.empty()


async def test_lean_queue_behind_a_timeout_as_the_polling_writer_waits() -> None:
    queue = transport.LeanQueue()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await queue.get()
    queue.put_nowait("after")  # the timed-out wait left no waiter behind to swallow it
    assert await asyncio.wait_for(queue.get(), 5) == "after"


async def test_the_servers_sockets_queue_in_lean_queues_and_still_write_in_order() -> None:
    sio = socketio.AsyncServer(async_mode="asgi")
    transport.lighten(sio)
    sock = AsyncSocket(sio.eio, "eio-1")
    sock.upgraded = True
    sio.eio.sockets["eio-1"] = sock
    transport.adopt(sio, "eio-1")
    assert isinstance(sock.queue, transport.LeanQueue)
    first, second = _message("a"), _message("b")
    await sock.send(first)  # the library's own path
    transport.send_packet(sock, second)
    assert transport.queued_packets(sock) == 2
    assert await sock.poll() == [first, second]
    await sock.close(wait=True, abort=True)  # join() returns: every packet was taken
